"""Consumer groups against a real broker: scale 1 -> 3 -> 1 while producing, fencing, restarts."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict

import grpc

from proto.gen import walbroker_pb2 as pb
from proto.gen import walbroker_pb2_grpc as pb_grpc
from tests.support import wait_until
from tests.walbroker.helpers import decode, encode, item
from walbroker.client import channel, metadata
from walbroker.consumer import Assignment, Consumer
from walbroker.errors import Code
from walbroker.producer import Producer


class Member:
    """A consumer thread recording what it received and every assignment it was given."""

    def __init__(self, address: str, ledger: dict[int, dict[str, frozenset[int]]]) -> None:
        self.seen: Counter[int] = Counter()
        self.ledger = ledger
        self.consumer = Consumer(
            address, "readers", "g", on_assignment=self._assigned, max_unacked_points=5_000
        )
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _assigned(self, a: Assignment) -> None:
        self.ledger[a.generation][a.member_id] = frozenset(a.positions)

    def _run(self) -> None:
        while not self.stop.is_set():
            for m in self.consumer.poll(0.2):
                self.seen.update(decode(m))
            self.consumer.commit()

    def start(self) -> Member:
        self.consumer.start()
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.consumer.close()


def test_scale_one_to_three_to_one_while_producing(broker):
    ledger: dict[int, dict[str, frozenset[int]]] = defaultdict(dict)
    sent = 0
    stop_producing = threading.Event()

    def produce() -> None:
        nonlocal sent
        with Producer(broker.address, "g", encode, batch_size=50, linger_ms=5) as p:
            while not stop_producing.is_set():
                p.send(f"gpu-{sent % 31}", item(0, sent))
                sent += 1
                if sent % 50 == 0:
                    time.sleep(0.005)

    producer = threading.Thread(target=produce)
    producer.start()
    first = Member(broker.address, ledger).start()
    time.sleep(1.0)
    others = [Member(broker.address, ledger).start() for _ in range(2)]
    assert wait_until(lambda: sum(bool(m.consumer.positions()) for m in others) == 2, 15)
    time.sleep(1.0)
    for m in others:
        m.close()
    assert wait_until(lambda: len(first.consumer.positions()) == 4, 15)
    time.sleep(0.5)
    stop_producing.set()
    producer.join(30)
    total: Counter[int] = Counter()
    assert wait_until(
        lambda: (
            sum(first.seen.values()) + sum(sum(m.seen.values()) for m in others) >= sent
            and set(first.seen) | {k for m in others for k in m.seen}
            >= {item(0, n) for n in range(sent)}
        ),
        30,
    )
    first.close()
    for m in (first, *others):
        total.update(m.seen)
    assert set(total) == {item(0, n) for n in range(sent)}, "a point was never delivered"
    assert all(sum(m.seen.values()) > 0 for m in others), "the scaled-up members got nothing"
    for generation, members in ledger.items():
        owned = [p for parts in members.values() for p in parts]
        assert len(owned) == len(set(owned)), f"generation {generation}: a partition twice"


def test_committed_offsets_survive_a_broker_restart(broker):
    with Producer(broker.address, "g", encode, batch_size=10) as p:
        for n in range(200):
            p.send(str(n), n)
    c = Consumer(broker.address, "keep", "g").start()
    got = 0
    while got < 200:
        got += sum(m.count for m in c.poll(1))
    assert c.commit()
    c.close()
    broker.restart()
    c = Consumer(broker.address, "keep", "g").start()
    try:
        a = c.wait_for_assignment()
        with channel(broker.address) as ch:
            ends = {p.partition: p.log_end_offset for p in metadata(ch, ["g"]).topics[0].partitions}
        assert a.positions == ends
        assert c.poll(0.5) == []
    finally:
        c.close()


def test_consumer_rejoins_after_a_broker_restart_and_resumes_from_committed(broker):
    with Producer(broker.address, "g", encode, batch_size=10) as p:
        for n in range(100):
            p.send(str(n), n)
    c = Consumer(broker.address, "rejoin", "g").start()
    try:
        seen: Counter[int] = Counter()
        while sum(seen.values()) < 100:
            for m in c.poll(1):
                seen.update(decode(m))
        assert c.commit()
        broker.restart()
        with Producer(broker.address, "g", encode, batch_size=10) as p:
            for n in range(100, 150):
                p.send(str(n), n)
        deadline = time.monotonic() + 20
        while sum(seen.values()) < 150 and time.monotonic() < deadline:
            for m in c.poll(0.5):
                seen.update(decode(m))
        assert set(seen) == set(range(150)) and max(seen.values()) == 1
    finally:
        c.close()


def _join(stub, group: str) -> tuple[object, list[pb.ConsumeRequest], pb.Assignment]:
    outbox: list[pb.ConsumeRequest] = [
        pb.ConsumeRequest(
            join=pb.Join(group=group, topic="g", role=pb.CONSUMER, session_timeout_ms=5000)
        )
    ]
    cond = threading.Condition()

    def requests():
        i = 0
        while True:
            with cond:
                cond.wait_for(lambda n=i: len(outbox) > n)
                req = outbox[i]
            i += 1
            if req is None:
                return
            yield req

    call = stub.Consume(requests())
    first = next(call).assignment

    def send(req):
        with cond:
            outbox.append(req)
            cond.notify_all()

    return call, send, first


def test_a_stale_generation_commit_is_rejected(broker):
    with Producer(broker.address, "g", encode) as p:
        p.send("k", 1)
    with channel(broker.address) as ch:
        stub = pb_grpc.BrokerStub(ch)
        call_a, send_a, a1 = _join(stub, "fence")
        call_b, send_b, _ = _join(stub, "fence")
        # member A learns of the new generation, then commits with the old one
        while True:
            resp = next(call_a)
            if resp.WhichOneof("kind") == "assignment" and resp.assignment.generation > 1:
                break
        p0 = a1.partitions[0].partition
        send_a(
            pb.ConsumeRequest(
                commit=pb.Commit(
                    commit_id=1,
                    generation=a1.generation,
                    offsets=[pb.PartitionOffset(partition=p0, offset=0)],
                )
            )
        )
        while (resp := next(call_a)).WhichOneof("kind") != "commit_ack":
            pass
        assert resp.commit_ack.status.code == Code.FAILED_PRECONDITION
        assert "stale" in resp.commit_ack.status.message
        send_a(None)
        send_b(None)
        for call in (call_a, call_b):  # closing the request side ends the stream cleanly
            for _ in call:
                pass
            assert call.code() == grpc.StatusCode.OK


def test_a_backlog_on_one_partition_does_not_starve_the_others(broker):
    with Producer(broker.address, "g", encode) as p:
        for _ in range(200):
            p.send_batch(0, encode(list(range(100))), 100)
        p.send_batch(3, encode([7]), 1)
    c = Consumer(broker.address, "fair", "g", max_unacked_points=1_000).start()
    try:
        seen: list[int] = []
        while len(seen) < 40:
            seen += [m.partition for m in c.poll(1.0)]
            c.commit()
        assert 3 in seen[:40], "partition 3 waited behind partition 0's whole backlog"
    finally:
        c.close()

"""A member's Consume stream on a real broker: what one commit may name."""

from __future__ import annotations

import queue
import re
import threading
import time
import urllib.request
from collections.abc import Iterator

import grpc

from proto.gen import walbroker_pb2 as pb
from proto.gen import walbroker_pb2_grpc as pb_grpc
from tests.walbroker.test_server import publish_raw
from walbroker.client import channel
from walbroker.errors import Code


class RawMember:
    """A Consume stream driven by hand: `send` requests, `next` control responses.

    A thread reads the stream: records are counted in `points`, the rest queued for `next`.
    """

    def __init__(self, address: str, join: pb.Join) -> None:
        self._requests: queue.Queue[pb.ConsumeRequest | None] = queue.Queue()
        self._requests.put(pb.ConsumeRequest(join=join))
        self._channel = channel(address)
        self.call = pb_grpc.BrokerStub(self._channel).Consume(self._outgoing(), timeout=60)
        self.points = 0
        self._responses: queue.Queue[pb.ConsumeResponse | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _outgoing(self) -> Iterator[pb.ConsumeRequest]:
        while (req := self._requests.get()) is not None:
            yield req

    def _read(self) -> None:
        try:
            for resp in self.call:
                if resp.WhichOneof("kind") == "records":
                    self.points += resp.records.count
                else:
                    self._responses.put(resp)
        except grpc.RpcError:
            pass
        self._responses.put(None)

    def send(self, req: pb.ConsumeRequest) -> None:
        self._requests.put(req)

    def next(self, kind: str) -> pb.ConsumeResponse:
        while (resp := self._responses.get(timeout=30)) is not None:
            if resp.WhichOneof("kind") == kind:
                return resp
        raise AssertionError(f"stream ended without a {kind}")

    def received_after(self, seconds: float) -> int:
        """Points delivered so far, `seconds` from now."""
        time.sleep(seconds)
        return self.points

    def close(self) -> None:
        self._requests.put(None)
        self.call.cancel()
        self._channel.close()


def test_a_commit_naming_more_offsets_than_partitions_is_refused_whole_and_not_echoed(broker):
    """A 50,000-offset commit was answered with its offsets and every foreign partition

    listed (~750 KB per answer); a client sending them without reading grew the broker.
    """
    member = RawMember(broker.address, pb.Join(group="g", topic="four", role=pb.CONSUMER))
    try:
        gen = member.next("assignment").assignment.generation
        offsets = [pb.PartitionOffset(partition=p, offset=0) for p in range(50_000)]
        commit = pb.Commit(commit_id=7, generation=gen, offsets=offsets)
        member.send(pb.ConsumeRequest(commit=commit))
        ack = member.next("commit_ack").commit_ack
        assert ack.commit_id == 7
        assert ack.status.code == Code.INVALID_ARGUMENT
        assert "at most the topic's 4 partitions, not 50000" in ack.status.message
        assert not ack.offsets and ack.ByteSize() < 200
        # A foreign partition is listed by number, only the first few of many.
        member.send(pb.ConsumeRequest(commit=pb.Commit(commit_id=8, generation=gen, offsets=[
            pb.PartitionOffset(partition=p, offset=0) for p in (0, 9)
        ])))  # fmt: skip
        ack = member.next("commit_ack").commit_ack
        assert ack.status.code == Code.FAILED_PRECONDITION, ack.status
        assert "does not own partitions [9]" in ack.status.message
        member.send(pb.ConsumeRequest(commit=pb.Commit(commit_id=9, generation=gen, offsets=[
            pb.PartitionOffset(partition=0, offset=0)
        ])))  # fmt: skip
        assert member.next("commit_ack").commit_ack.status.code == Code.OK
    finally:
        member.close()


def test_delivery_pauses_at_max_unacked_points_whatever_credit_is_sent(broker_factory):
    """README: "a member never has more than --max-unacked-points uncommitted". A member that

    never committed but kept sending Credit received all 5,000 points past a bound of 1,000.
    """
    b = broker_factory("--topic", "u:1", "--topic", "big:1", "--max-unacked-points", "1000")
    b.start()
    reqs = [
        pb.PublishRequest(request_id=i, topic="u", payload=b"p" * 100, count=100) for i in range(50)
    ]
    assert all(a.status.code == Code.OK for a in publish_raw(b.address, *reqs))
    join = pb.Join(group="g", topic="u", role=pb.CONSUMER, credit_points=1000)
    member = RawMember(b.address, join)
    credit = pb.ConsumeRequest(credit=pb.Credit(points=1000))
    try:
        gen = member.next("assignment").assignment.generation
        for _ in range(5):
            member.send(credit)
            time.sleep(0.4)
        assert member.points == 1000
        assert scrape_pauses(b.metrics_url) >= 1

        def commit(offset: int) -> None:
            offsets = [pb.PartitionOffset(partition=0, offset=offset)]
            member.send(pb.ConsumeRequest(commit=pb.Commit(generation=gen, offsets=offsets)))
            member.send(credit)

        commit(500)  # 500 uncommitted: room for 500 more
        assert member.received_after(1.0) == 1500
        commit(1500)
        assert member.received_after(1.0) == 2500
    finally:
        member.close()
    # A record larger than the bound is delivered alone, once nothing is uncommitted.
    big = pb.PublishRequest(request_id=1, topic="big", payload=b"p" * 1500, count=1500)
    small = pb.PublishRequest(request_id=2, topic="big", payload=b"p" * 10, count=10)
    assert all(a.status.code == Code.OK for a in publish_raw(b.address, big, small))
    member = RawMember(b.address, pb.Join(group="g2", topic="big", role=pb.CONSUMER))
    try:
        gen = member.next("assignment").assignment.generation
        member.send(credit)
        assert member.received_after(1.0) == 1500
        offsets = [pb.PartitionOffset(partition=0, offset=1500)]
        member.send(pb.ConsumeRequest(commit=pb.Commit(generation=gen, offsets=offsets)))
        member.send(credit)
        assert member.received_after(1.0) == 1510
    finally:
        member.close()


def scrape_pauses(url: str) -> float:
    body = urllib.request.urlopen(url, timeout=10).read().decode()
    found = re.findall(r"^gpu_telemetry_broker_unacked_pauses_total (\S+)$", body, re.M)
    return float(found[0]) if found else 0.0

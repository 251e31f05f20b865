"""Exactly-once holes in the producer's sequences and grants, each reproduced on real parts.

1. A producer/partition with no stored sequence took ANY sequence as its first: when the
   first batch (0) was refused at submit (the writer queue full) and the pipelined 1 got in,
   the resent 0 was acknowledged as a duplicate without being appended. Now only 0 starts.
2. The same hole behind a fence: a fenced first batch made the producer renumber a batch
   the broker had appended, and its next batch was acknowledged as a duplicate, never
   appended, while a later batch's progress counted it (a whole pass of a partition missing
   in tests/streamer, the streamer exiting 0).
3. A batch refused for good under a grant stayed counted in the progress of the batches
   after it: the broker stored a progress ahead of the log.
4. A batch encoded slowly (by the linger thread) went out after later batches of its
   partition (encoded by the sending thread): the broker refused those as out of order and
   the producer resent everything unacknowledged (seen in CI under load as an unexpected
   OutOfOrderSequence in tests/walbroker/test_backpressure.py).
"""

from __future__ import annotations

import threading
import time

import grpc

from proto.gen import walbroker_pb2 as pb
from proto.gen import walbroker_pb2_grpc as pb_grpc
from tests.walbroker.helpers import drain, encode, item
from walbroker.producer import Producer


def _publish(address: str, reqs: list[pb.PublishRequest]) -> list[pb.PublishAck]:
    with grpc.insecure_channel(address) as ch:
        return list(pb_grpc.BrokerStub(ch).Publish(iter(reqs), timeout=20))


def _req(seq: int, items: list[int]) -> pb.PublishRequest:
    return pb.PublishRequest(
        request_id=seq + 1,
        topic="f1",
        partition=0,
        payload=encode(items),
        count=len(items),
        producer_id="p-f1",
        sequence=seq,
    )


def test_a_first_sequence_refused_then_resent_is_appended(broker_factory):
    """The protocol the producer follows after its sequence 0 was refused at submit."""
    broker = broker_factory("--topic", "f1:1").start()
    first, second = [item(0, n) for n in range(10)], [item(0, n) for n in range(10, 20)]
    (ack1,) = _publish(broker.address, [_req(1, second)])  # seq 0 bounced, seq 1 next
    # the producer resends from seq 0 (and seq 1 again unless it was acknowledged)
    resend = [_req(0, first)] + ([] if ack1.status.code == 0 else [_req(1, second)])
    ack0, *_ = _publish(broker.address, resend)
    seen, _ = drain(broker.address, "f1", 20, timeout_s=5)
    # Exactly-once demands: seq 1 refused as out of order (resend from 0), or seq 0 appended.
    assert sum(seen.values()) == 20, (
        f"seq 0 acked (code={ack0.status.code}, duplicate={ack0.duplicate}) "
        f"but only {sum(seen.values())} of 20 points are in the log"
    )


def test_a_producer_under_queue_backpressure_keeps_its_first_batch(broker_factory):
    """The same through the real Producer: a tiny writer queue bounces first batches."""
    broker = broker_factory("--topic", "f1:4", "--max-queue-bytes", "900").start()
    total = 8_000
    with Producer(broker.address, "f1", encode, batch_size=100, linger_ms=1) as p:
        for n in range(total):
            p.send(str(n), item(0, n))
        p.flush(60)
        acked, dups = p.stats.acked_points, p.stats.duplicates
    seen, _ = drain(broker.address, "f1", total, timeout_s=10)
    assert sum(seen.values()) == total and acked == total, (
        f"producer acked {acked} points ({dups} duplicate acks), log holds "
        f"{sum(seen.values())} of {total}, missing {total - len(seen)} distinct"
    )


def test_after_a_fenced_first_batch_every_later_batch_is_appended(broker_factory):
    """the first batch of a partition goes out under a grant
    the broker no longer knows (e.g. the broker restarted), the next under another grant
    (here: untracked). The broker fences the first (nothing stored for the producer) and
    takes the second as the producer's FIRST sequence (hole 1). The producer, on the ABORTED
    ack, renumbers the second batch 1 -> 0 although the broker has appended it as 1, so
    its next batch gets sequence 1: in the broker's window, acked as a duplicate and never
    appended (with a fence, a later batch's progress would count its rows)."""
    broker = broker_factory("--topic", "f2:1").start()
    fenced: list[tuple[int, int]] = []
    a, b, c = ([item(k, n) for n in range(10)] for k in range(3))
    with Producer(broker.address, "f2", on_fenced=lambda p, n: fenced.append((p, n))) as p:
        p.track(0, "streamers", 99, 0)  # a grant the broker does not hold
        p.send_batch(0, encode(a), len(a))
        p.untrack(0)
        p.send_batch(0, encode(b), len(b))
        p.flush(20)
        p.send_batch(0, encode(c), len(c))
        p.flush(20)
        stats = p.stats
    seen, _ = drain(broker.address, "f2", 20, timeout_s=5)
    assert fenced == [(0, 10)], fenced  # A was fenced, as it should be
    missing_c = [x for x in c if x not in seen]
    assert not missing_c, (
        f"batch C acked ({stats.acked_points} points acked, {stats.duplicates} as duplicates) "
        f"but {len(missing_c)} of its 10 points are not in the log; log holds {sorted(seen)}"
    )


def test_a_batch_refused_under_a_grant_is_not_counted_in_the_stored_progress(tmp_path):
    """Under a grant every batch carries progress = grant progress + points sealed so
    far. When batch k is refused for good (`InFlight.fail`: a non-retriable ack, or the
    producer's own oversize check after `seal`), the later batches are renumbered and
    resent but keep progress values that count k's points: the broker stores a progress
    ahead of what the log holds, and the next owner skips k's rows for good."""
    from walbroker.config import LogConfig
    from walbroker.inflight import Grant, InFlight
    from walbroker.log import Log
    from walbroker.ops import Fence
    from walbroker.types import TopicPartition as TP

    wal = Log(LogConfig(tmp_path))
    wal.grants.grant("streamers", 0, 7)
    wal.start()
    wal.create_topic("t", 1)
    try:
        f = InFlight("t", "streamer-1")
        f.grants[0] = Grant("streamers", 7, 0)
        k = f.seal(0, 100)
        f.seal(0, 50)  # sealed and pipelined behind k
        f.fail(k)  # k refused for good (never appended)
        for b in sorted(f.batches.values(), key=lambda b: b.sequence):  # what is resent
            assert b.fence is not None
            group, epoch, progress = b.fence
            fence = Fence(group, epoch, progress)
            wal.append(TP("t", 0), b"y" * 400, b.count, "streamer-1", b.sequence, fence).result(5)
        in_log = wal.state(TP("t", 0)).info().log_end_offset
        stored = wal.offsets.progress("streamers", TP("t", 0)) or 0
        assert stored == in_log, f"progress {stored} but the log holds {in_log} rows"
    finally:
        wal.close()


def test_a_batch_encoded_late_still_goes_out_before_the_later_ones(broker_factory):
    broker = broker_factory("--topic", "late:1").start()
    lingering = threading.Event()

    def encode_first_slowly(items: list[int]) -> bytes:
        if items[0] == item(0, 0):  # the first batch: sealed and encoded by the linger thread
            lingering.set()
            time.sleep(0.5)
        return encode(items)

    pushed_back = []
    with Producer(
        broker.address, "late", encode_first_slowly, batch_size=100, linger_ms=5,
        on_backpressure=pushed_back.append,
    ) as p:  # fmt: skip
        p.send("k", item(0, 0))
        assert lingering.wait(5)
        for n in range(1, 301):  # three full batches, sealed and encoded by this thread
            p.send("k", item(0, n))
    assert not pushed_back, [(e.code.name, e.message) for e in pushed_back]
    seen, records = drain(broker.address, "late", 301)
    assert seen == {item(0, n): 1 for n in range(301)}
    assert [count for _, count in records[0]] == [1, 100, 100, 100]  # in sealing order

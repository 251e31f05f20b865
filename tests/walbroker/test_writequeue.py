"""The writer's queue in-process: each client served in turn, its own order kept, barriers."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from walbroker.errors import ResourceExhausted
from walbroker.ops import AppendOp, BarrierOp, Op
from walbroker.types import TopicPartition
from walbroker.writequeue import WriteQueue


def append(name: str, size: int = 10) -> AppendOp:
    return AppendOp(TopicPartition("t", 0), b"x" * size, 1, name, 0, Future())


def names(ops: list[Op]) -> list[str]:
    return [op.producer_id if isinstance(op, AppendOp) else "barrier" for op in ops]


def test_clients_take_turns_and_each_keeps_its_order():
    q = WriteQueue(max_batches=100, max_bytes=10_000, retry_after_ms=200)
    for i in range(4):
        q.put(append(f"heavy{i}"), "heavy")
    q.put(append("light0"), "light")
    q.put(append("light1"), "light")
    assert names(q.take(max_ops=4, max_bytes=10_000, timeout_s=0)) == [
        "heavy0", "light0", "heavy1", "light1"
    ]  # fmt: skip
    assert names(q.take(max_ops=10, max_bytes=10_000, timeout_s=0)) == ["heavy2", "heavy3"]
    assert (q.batches, q.bytes, q.clients) == (0, 0, 0)


def test_a_commit_holds_at_most_max_bytes_unless_one_batch_is_larger():
    q = WriteQueue(max_batches=100, max_bytes=10_000, retry_after_ms=200)
    for i in range(3):
        q.put(append(f"a{i}", 400), "a")
    assert names(q.take(max_ops=10, max_bytes=1000, timeout_s=0)) == ["a0", "a1"]
    assert names(q.take(max_ops=10, max_bytes=100, timeout_s=0)) == ["a2"]


def test_a_barrier_waits_for_every_append_queued_before_it():
    q = WriteQueue(max_batches=100, max_bytes=10_000, retry_after_ms=200)
    q.put(append("a0"), "a")
    q.put(append("b0"), "b")
    q.put(BarrierOp(Future()))
    q.put(append("a1"), "a")
    assert names(q.take(max_ops=1, max_bytes=10_000, timeout_s=0)) == ["a0"]
    assert names(q.take(max_ops=1, max_bytes=10_000, timeout_s=0)) == ["b0"]
    assert names(q.take(max_ops=10, max_bytes=10_000, timeout_s=0)) == ["barrier", "a1"]


def test_a_client_with_batches_waiting_leaves_an_eighth_of_the_queue_to_others():
    q = WriteQueue(max_batches=100, max_bytes=8_000, retry_after_ms=200)
    for i in range(7):
        q.put(append(f"heavy{i}", 1000), "heavy")
    with pytest.raises(ResourceExhausted, match=r"limits 100 batches and 8000 bytes \(--max-queue"):
        q.put(append("heavy7", 1000), "heavy")
    q.put(append("light0", 1000), "light")  # a newcomer still gets in
    with pytest.raises(ResourceExhausted):
        q.put(append("other", 1), "other")  # and the whole queue is bounded

"""The log's single writer: group commit of appends, offset commits and retention deletions.

The writer thread drains every operation waiting in its queue, applies them in
one LMDB write transaction, commits it (with fsync under `--fsync always`) and
only then publishes the new extents to memory and resolves the operations'
futures. An acknowledged append is therefore on disk. With `--fsync interval`
the commit is not synced; a named loop syncs every `fsync_interval_ms`, which
bounds what an OS crash (not a process crash) can lose.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import lmdb

from walbroker import keys, retention
from walbroker.errors import (
    BrokerError,
    Fenced,
    InvalidArgument,
    NotFound,
    OutOfOrderSequence,
    ResourceExhausted,
    Unavailable,
)
from walbroker.ops import (
    AppendOp,
    BarrierOp,
    CommitOffsetsOp,
    CreateTopicOp,
    DeleteGroupOp,
    DeleteTopicOp,
    Fence,
    Op,
    RetentionOp,
    SettleLegacyOp,
)
from walbroker.txn import Extent, StagedTxn
from walbroker.types import AppendResult, Record, TopicPartition
from walbroker.writequeue import WriteQueue

if TYPE_CHECKING:
    from walbroker.log import Log, PartitionState

log = logging.getLogger(__name__)

__all__ = ["Fence", "Writer"]  # Fence is re-exported: callers name it with the writer


def _is_enospc(exc: lmdb.Error) -> bool:
    return "No space left" in str(exc) or getattr(exc, "errno", None) == errno.ENOSPC


class Writer:
    """Owns every LMDB write transaction; runs the log-writer, log-fsync and log-retention loops."""

    def __init__(self, wal: Log) -> None:
        self.wal = wal
        self.config = wal.config
        self.queue = WriteQueue(
            self.config.max_queue_batches, self.config.max_queue_bytes, self.config.retry_after_ms
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # Set when the writer cannot go on (e.g. the LMDB environment broke): every
        # submission is refused with it and the broker exits non-zero.
        self.failed: str | None = None

    def start(self) -> None:
        """Start the background loops."""
        loops: list[tuple[str, Any]] = [("log-writer", self._run)]
        if self.config.fsync == "interval":
            loops.append(("log-fsync", self._fsync_loop))
        if self.config.retention_age_s > 0:
            loops.append(("log-retention", self._retention_loop))
        for name, target in loops:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
            log.info("loop started", extra={"loop": name})

    def stop(self) -> None:
        """Drain the queue, then stop every loop."""
        self._stop.set()
        self.queue.wake()
        for t in self._threads:
            t.join(timeout=30)
            log.info("loop stopped", extra={"loop": t.name})
        self._threads.clear()

    def submit(self, op: Op, client: str = "") -> None:
        """Queue an operation; an append is `client`'s and refused when the queue is full."""
        if self._stop.is_set() or self.failed is not None:
            raise Unavailable(self.failed or "broker is shutting down")
        self.queue.put(op, client)
        self._gauge()

    def _gauge(self) -> None:
        metrics, q = self.wal.metrics, self.queue
        metrics.queue_depth.set(q.batches)
        metrics.queue_bytes.set(q.bytes)
        metrics.queue_clients.set(q.clients)

    # ---- loops -------------------------------------------------------------------------

    def _run(self) -> None:
        """The log-writer loop: never dies of one bad batch; a broken writer stops the broker."""
        while True:
            ops = self._drain()
            if ops:
                try:
                    self._commit(ops)
                except Exception as exc:  # the loop must not die silently
                    log.exception("loop error", extra={"loop": "log-writer", "ops": len(ops)})
                    self._fail(ops, Unavailable(f"log writer error: {exc}"))
            elif self._stop.is_set():
                return

    def _drain(self) -> list[Op]:
        c = self.config
        ops = self.queue.take(c.max_records_per_commit, c.max_commit_bytes, timeout_s=0.2)
        self._gauge()
        return ops

    def _fsync_loop(self) -> None:
        interval = self.config.fsync_interval_ms / 1000
        while not self._stop.wait(interval):
            t0 = time.perf_counter()
            self.wal.env.sync(True)
            self.wal.metrics.commit_seconds.observe(time.perf_counter() - t0)

    def _retention_loop(self) -> None:
        while not self._stop.wait(self.config.retention_check_s):
            fut: Future[None] = Future()
            try:
                self.submit(RetentionOp(fut))
            except Unavailable:
                return

    # ---- one group commit ----------------------------------------------------------------

    def _commit(self, ops: list[Op]) -> None:
        """Apply `ops` in one transaction; if it fails as a whole, find the culprit.

        A BrokerError fails only its own operation. An error that aborts the whole
        transaction (an LMDB error on one operation's key, say) would fail every
        client's batch in the group commit: then each operation is retried in a
        transaction of its own, so only the bad one fails.
        """
        t0 = time.perf_counter()
        try:
            staged, results = self._transact(ops)
        except (lmdb.Error, ValueError, OverflowError) as exc:
            if len(ops) > 1:
                log.warning(
                    "group commit failed; retrying its operations one by one",
                    extra={"ops": len(ops), "error": str(exc)},
                )
                for op in ops:
                    self._commit([op])
                return
            self._fail(ops, self._error_of(exc))
            return
        self.wal.metrics.commit_seconds.observe(time.perf_counter() - t0)
        self.wal.metrics.commit_records.observe(len(ops))
        self._publish(staged)
        for op, result, error in results:
            if error is not None:
                op.future.set_exception(error)
            else:
                op.future.set_result(result)
        self.wal.notify()

    def _transact(
        self, ops: list[Op]
    ) -> tuple[StagedTxn, list[tuple[Op, Any, BrokerError | None]]]:
        results: list[tuple[Op, Any, BrokerError | None]] = []
        with self.wal.env.begin(write=True) as txn:
            staged = StagedTxn(self.wal, txn)
            for op in ops:
                try:
                    results.append((op, self._apply(staged, op), None))
                except BrokerError as exc:  # without its traceback: that holds the payload
                    results.append((op, None, exc.with_traceback(None)))
        return staged, results

    def _error_of(self, exc: Exception) -> BrokerError:
        """What a client is told when its own operation broke the transaction."""
        retry = self.config.retry_after_ms
        if isinstance(exc, lmdb.MapFullError):
            log.error("LMDB map full: refusing the batch")
            return ResourceExhausted("log storage map is full", retry_after_ms=retry)
        if isinstance(exc, lmdb.Error) and _is_enospc(exc):
            log.error("no space left on the data directory's file system")
            return ResourceExhausted("no space left on the broker's disk", retry_after_ms=retry)
        if isinstance(exc, lmdb.BadValsizeError | ValueError | OverflowError):
            return InvalidArgument(f"request cannot be stored: {exc}")
        if isinstance(exc, lmdb.PanicError | lmdb.CorruptedError | lmdb.InvalidError):
            self.failed = f"log storage is broken: {exc}"
            log.critical("loop error", extra={"loop": "log-writer", "error": self.failed})
        log.error("LMDB write transaction failed", extra={"error": str(exc)})
        return Unavailable(f"log write failed: {exc}")

    @staticmethod
    def _fail(ops: list[Op], exc: BrokerError) -> None:
        for op in ops:
            op.future.set_exception(exc)

    def _apply(self, staged: StagedTxn, op: Op) -> Any:
        if isinstance(op, AppendOp):
            return self._append(staged, op)
        if isinstance(op, CommitOffsetsOp):
            return self._commit_offsets(staged, op)
        if isinstance(op, CreateTopicOp):
            return self._create_topic(staged, op)
        if isinstance(op, DeleteTopicOp):
            return staged.delete_topic(op.topic)
        if isinstance(op, DeleteGroupOp):
            return self.wal.offsets.stage_delete_group(staged, op.group)
        if isinstance(op, SettleLegacyOp):
            return self.wal.offsets.stage_adopt(staged, op.group, op.role)
        if isinstance(op, BarrierOp):
            return None
        return retention.delete_aged(staged, op.now_ns)

    def _create_topic(self, staged: StagedTxn, op: CreateTopicOp) -> int:
        existing = self.wal.topics.get(op.topic) or staged.topics.get(op.topic)
        if existing:
            return existing
        staged.txn.put(
            op.topic.encode(),
            keys.pack_topic(op.partitions, time.time_ns()),
            db=self.wal.db["topics"],
        )
        staged.topics[op.topic] = op.partitions
        return op.partitions

    def _commit_offsets(self, staged: StagedTxn, op: CommitOffsetsOp) -> None:
        now = time.time_ns()
        for p, offset in op.offsets.items():
            self.wal.offsets.stage_commit(
                staged, op.group, TopicPartition(op.topic, p), (offset, now)
            )

    # ---- appends -----------------------------------------------------------------------

    def _append(self, staged: StagedTxn, op: AppendOp) -> AppendResult:
        if op.tp.topic in staged.deleted_topics:
            raise NotFound(f"topic {op.tp.topic!r} was deleted")
        dup = self._check_sequence(staged, op)
        if dup is not None:
            staged.duplicates[op.tp.topic] = staged.duplicates.get(op.tp.topic, 0) + 1
            return dup
        if op.fence is not None:
            self._check_fence(op.tp, op.fence)
        ext = staged.extent(op.tp)
        need = keys.RECORD_HEADER_SIZE + len(op.payload) + len(keys.record_key(op.tp, 0))
        retention.make_room(staged, need)
        t = max(time.time_ns(), ext.last_ns + 1)
        base = ext.end
        txn, db = staged.txn, self.wal.db
        txn.put(
            keys.record_key(op.tp, base),
            keys.pack_record(t, op.count, op.payload),
            db=db["records"],
        )
        txn.put(keys.time_key(op.tp, t), keys.pack_u64(base), db=db["timeindex"])
        if ext.start == ext.end:
            ext.first_ns = t
        ext.end += op.count
        ext.size += need
        ext.last_ns = t
        ext.new.append(Record(base, op.count, t, op.payload))
        staged.put_extent(op.tp, ext)
        if op.producer_id:
            self._remember_sequence(staged, op, base, t)
        if op.fence is not None:  # the source's progress, atomically with its data
            entry = (op.fence.progress, time.time_ns())
            self.wal.offsets.stage_progress(staged, op.fence.group, op.tp, entry)
        staged.enqueued[op.tp.topic] = staged.enqueued.get(op.tp.topic, 0) + op.count
        return AppendResult(op.tp, base, op.count, t)

    def _check_sequence(self, staged: StagedTxn, op: AppendOp) -> AppendResult | None:
        """A duplicate's original result, None for the next sequence, else OutOfOrderSequence."""
        if not op.producer_id:
            return None
        raw = staged.txn.get(keys.producer_key(op.producer_id, op.tp), db=self.wal.db["producers"])
        if raw is None:
            # No batch of this producer is stored yet: only its sequence 0 may start it. A
            # later one (its 0 was refused or fenced) would be taken as the first, and the
            # resent 0 then acknowledged as a duplicate without ever being appended.
            if op.sequence == 0:
                return None
            raise OutOfOrderSequence(
                f"sequence {op.sequence} before any: resend from 0", retry_after_ms=0
            )
        last, window = keys.unpack_producer(bytes(raw))
        if op.sequence == last + 1:
            return None
        if op.sequence > last + 1:
            raise OutOfOrderSequence(
                f"sequence {op.sequence} after {last}: resend from {last + 1}", retry_after_ms=0
            )
        for seq, base, count, t in window:
            if seq == op.sequence:
                return AppendResult(op.tp, base, count, t, duplicate=True)
        return AppendResult(op.tp, 0, op.count, 0, duplicate=True)

    def _check_fence(self, tp: TopicPartition, fence: Fence) -> None:
        """Refuse a producer-group batch whose sender no longer holds the partition's grant."""
        current = self.wal.grants.epoch_of(fence.group, tp.partition)
        if current != fence.epoch:
            raise Fenced(
                f"partition {tp.partition} of group {fence.group!r} is no longer granted "
                f"under epoch {fence.epoch}; stop producing it"
            )

    def _remember_sequence(self, staged: StagedTxn, op: AppendOp, base: int, t: int) -> None:
        key = keys.producer_key(op.producer_id, op.tp)
        raw = staged.txn.get(key, db=self.wal.db["producers"])
        window = keys.unpack_producer(bytes(raw))[1] if raw is not None else []
        window = [*window, (op.sequence, base, op.count, t)][-keys.PRODUCER_WINDOW :]
        staged.txn.put(key, keys.pack_producer(op.sequence, window), db=self.wal.db["producers"])

    # ---- after commit ------------------------------------------------------------------

    def _publish(self, staged: StagedTxn) -> None:
        """Mirror a committed transaction into memory and metrics."""
        wal, metrics = self.wal, self.wal.metrics
        for topic, n in staged.topics.items():
            wal.add_topic(topic, n)
        for tp, ext in staged.extents.items():
            if tp.topic in staged.deleted_topics:
                continue
            state = wal.partitions[tp]
            self._publish_extent(state, ext)
            wal.hot.add(state, ext.new)
        wal.hot.evict()
        metrics.hot_buffer_bytes.set(wal.hot.bytes)
        wal.offsets.publish(staged)
        for topic in staged.deleted_topics:
            wal.forget_topic(topic)
        for topic, n in staged.enqueued.items():
            metrics.enqueued.labels(topic).inc(n)
        for topic, n in staged.duplicates.items():
            metrics.duplicates.labels(topic).inc(n)
        for (topic, reason), n in staged.deleted.items():
            metrics.deleted.labels(topic, reason).inc(n)
        metrics.log_bytes.set(wal.total_bytes())

    @staticmethod
    def _publish_extent(state: PartitionState, ext: Extent) -> None:
        with state.lock:
            state.start, state.end, state.size = ext.start, ext.end, ext.size
            state.first_ns, state.last_ns = ext.first_ns, ext.last_ns
            hot = state.hot
            drop = 0
            while drop < len(hot) and hot[drop].base_offset < ext.start:
                drop += 1
            if drop:  # deleted by retention: no longer readable (the hot buffer frees them)
                del hot[:drop]

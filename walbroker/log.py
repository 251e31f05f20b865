"""The partitioned log on LMDB: appends through one group-commit writer, reads from memory or LMDB.

LMDB layout — one environment in `DATA_DIR/log/` (`data.mdb`), opened once per
process. Integers in keys are big-endian (byte order = numeric order); names
never contain NUL. `P` below is `topic NUL u32(partition)`.

==============  ==============================  ==========================================
sub-database    key                             value
==============  ==============================  ==========================================
``topics``      topic                           u32 partitions, i64 created_ns
``parts``       P                               u64 log_start, u64 log_end, u64 size_bytes,
                                                i64 first_publish_ns, i64 last_publish_ns
``records``     P u64(base_offset)              i64 publish_time_ns, u32 count, payload
``timeindex``   P u64(publish_time_ns)          u64 base_offset of that record
``producers``   producer_id NUL P               u64 last_sequence, then up to 5 entries of
                                                (u64 seq, u64 base, u32 count, i64 time)
``offsets``     group NUL P                     u64 committed offset, i64 commit_time_ns
``progress``    group NUL P                     u64 source progress, i64 commit_time_ns
``meta``        ``layout`` / ``legacy`` NUL group  u32 layout version / empty (upgrade markers)
==============  ==============================  ==========================================

``offsets``, ``progress`` and ``meta`` belong to `walbroker.offsets.Offsets` (their only
owner; it also upgrades data directories of an older layout at open).

A record is one published batch: `count` points at offsets
[base_offset, base_offset + count). Offsets in a partition are contiguous and
publish times strictly increase, so the time index is ordered both ways.
`parts` is rewritten in the same transaction as every append or deletion, so a
restart reads O(partitions) keys, never the records.

Threads: one writer thread (`walbroker.writer.Writer`) owns every write
transaction, except the one-time layout upgrade at open (`Offsets.upgrade`),
which runs before the writer starts. Any thread may read; read transactions are short and always
closed. Each partition's in-memory state (`PartitionState`) has its own lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TypeVar

import lmdb

from walbroker import keys
from walbroker.config import LogConfig
from walbroker.disk import DiskGuard, check_map_size
from walbroker.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from walbroker.grants import Grants
from walbroker.hotbuffer import HotBuffer
from walbroker.metrics import BrokerMetrics
from walbroker.offsets import Offsets
from walbroker.ops import (
    AppendOp,
    BarrierOp,
    CommitOffsetsOp,
    CreateTopicOp,
    DeleteGroupOp,
    DeleteTopicOp,
    Fence,
    RetentionOp,
    SettleLegacyOp,
)
from walbroker.types import AppendResult, PartitionInfo, Record, TopicPartition, validate_name
from walbroker.validation import validate_batch
from walbroker.writer import Writer

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(slots=True)
class PartitionState:
    """A partition's durable extent mirrored in memory, plus its hot buffer of recent records."""

    tp: TopicPartition
    start: int = 0
    end: int = 0
    size: int = 0
    first_ns: int = 0
    last_ns: int = 0
    # Recent records in offset order; `walbroker.hotbuffer` fills and evicts it.
    hot: list[Record] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def info(self) -> PartitionInfo:
        """A consistent snapshot of the extent."""
        with self.lock:
            return PartitionInfo(
                self.tp, self.start, self.end, self.size, self.first_ns, self.last_ns
            )

    def read_hot(self, offset: int, max_points: int) -> list[Record] | None:
        """Records from the hot buffer starting at the one holding `offset`; None if not there."""
        with self.lock:
            hot = self.hot
            if not hot or offset < hot[0].base_offset:
                return None
            i = len(hot) - 1
            while hot[i].base_offset > offset:
                i -= 1
            out: list[Record] = []
            points = 0
            for rec in hot[i:]:
                if rec.next_offset <= offset:
                    continue
                out.append(rec)
                points += rec.count
                if points >= max_points:
                    break
            return out


class Log:
    """Topics of fixed partition counts, appended through the writer and read by offset or time."""

    def __init__(self, config: LogConfig, metrics: BrokerMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or BrokerMetrics()
        path = config.data_dir / "log"
        path.mkdir(parents=True, exist_ok=True)
        check_map_size(path, config.map_size_bytes, config.retention_bytes)
        self.disk = DiskGuard(path, config.min_free_bytes, config.retry_after_ms)
        self.hot = HotBuffer(config.hot_buffer_bytes)
        self.env = lmdb.open(
            str(path),
            map_size=config.map_size_bytes,
            max_dbs=16,
            subdir=True,
            sync=config.fsync == "always",
            metasync=config.fsync == "always",
            readahead=False,
            max_readers=512,
        )
        self.db = {
            name: self.env.open_db(name.encode())
            for name in (
                "topics",
                "parts",
                "records",
                "timeindex",
                "producers",
                "offsets",
                "progress",
                "meta",
            )
        }
        self.topics: dict[str, int] = {}
        self.partitions: dict[TopicPartition, PartitionState] = {}
        # Consumer groups' committed offsets and producer groups' progress (one owner).
        self.offsets = Offsets(self.env, self.db)
        # Producer-group grant epochs: the group coordinator writes them, the writer fences
        # producer-group batches with them.
        self.grants = Grants()
        # Groups `block` retention ignores (idle and empty); replaced whole by the group-reaper
        # loop (`walbroker.group_retention`), read by the writer.
        self.retention_ignored: frozenset[str] = frozenset()
        self._listeners: set[threading.Event] = set()
        self._listeners_lock = threading.Lock()
        legacy = self.offsets.upgrade()
        if legacy:
            log.warning(
                "data directory of an older layout: groups' progress is moved when a "
                "producer-group member joins",
                extra={"legacy_groups": legacy},
            )
        self._load()
        self.metrics.disk_budget.set(config.retention_bytes)
        self.metrics.log_bytes.set(self.total_bytes())
        self.writer = Writer(self)

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer (and with it the fsync and retention loops)."""
        self.writer.start()

    def close(self) -> None:
        """Finish queued appends, stop the writer and close LMDB."""
        self.writer.stop()
        self.env.sync(True)
        self.env.close()

    def _load(self) -> None:
        with self.env.begin() as txn:
            for k, v in txn.cursor(db=self.db["topics"]):
                self.add_topic(bytes(k).decode(), keys.unpack_topic(v)[0])
            for tp, state in self.partitions.items():
                raw = txn.get(keys.partition_prefix(tp), db=self.db["parts"])
                if raw is not None:
                    (state.start, state.end, state.size, state.first_ns, state.last_ns) = (
                        keys.unpack_partition(raw)
                    )
            self.offsets.load(txn)
        log.info(
            "log opened",
            extra={
                "topics": len(self.topics),
                "partitions": len(self.partitions),
                "bytes": self.total_bytes(),
            },
        )

    def add_topic(self, topic: str, partitions: int) -> None:
        """Mirror a stored topic in memory (at start-up, and by the writer after creating it)."""
        for p in range(partitions):
            tp = TopicPartition(topic, p)
            self.partitions.setdefault(tp, PartitionState(tp))
        self.topics[topic] = partitions
        self.metrics.declare_topic(topic)
        self.metrics.topics.set(len(self.topics))

    # ---- writes ------------------------------------------------------------------------

    def create_topic(self, topic: str, partitions: int) -> int:
        """Create `topic` durably if it does not exist; return its partition count."""
        validate_name("topic", topic)
        if topic in self.topics:
            return self.topics[topic]
        limit = self.config.max_partitions_per_topic
        if not 1 <= partitions <= limit:
            raise InvalidArgument(f"partitions must be in 1..{limit}, got {partitions}")
        if len(self.topics) >= self.config.max_topics:
            raise ResourceExhausted(
                f"topic limit of {self.config.max_topics} reached (--max-topics); "
                "delete a topic first"
            )
        fut: Future[int] = Future()
        self.writer.submit(CreateTopicOp(topic, partitions, fut))
        return self.wait(fut, "create topic")

    def ensure_topic(self, topic: str) -> int:
        """The partition count of `topic`; created with the default count only if auto-creation
        is on (`--auto-create-topics`), else NotFound."""
        validate_name("topic", topic)
        n = self.topics.get(topic)
        if n is not None:
            return n
        if not self.config.auto_create_topics:
            raise NotFound(
                f"unknown topic {topic!r} (topics are created by the broker's --topic flag or "
                "`walbroker admin create-topic`)"
            )
        return self.create_topic(topic, self.config.default_partitions)

    def delete_topic(self, topic: str) -> None:
        """Delete a topic: its records, extents, producer state and offsets (frees the budget)."""
        self.partition_count(topic)
        fut: Future[None] = Future()
        self.writer.submit(DeleteTopicOp(topic, fut))
        self.wait(fut, "delete topic")

    def delete_group_offsets(self, group: str) -> None:
        """Forget every committed offset of `group`."""
        fut: Future[None] = Future()
        self.writer.submit(DeleteGroupOp(group, fut))
        self.wait(fut, "delete group")

    def settle_legacy_group(self, group: str, role: str) -> None:
        """Settle a group an older broker left ambiguous (`walbroker.offsets`, "Upgrades")."""
        fut: Future[None] = Future()
        self.writer.submit(SettleLegacyOp(group, role, fut))
        self.wait(fut, "upgrade group")

    def wait(self, fut: Future[T], what: str) -> T:
        """The writer's answer to an operation, or Unavailable after `writer_timeout_s`."""
        try:
            return fut.result(timeout=self.config.writer_timeout_s)
        except FutureTimeout:
            raise Unavailable(
                f"{what}: the log writer did not answer within {self.config.writer_timeout_s} s"
            ) from None

    def partition_count(self, topic: str) -> int:
        """The partition count of an existing topic, else NotFound."""
        try:
            return self.topics[topic]
        except KeyError:
            raise NotFound(f"unknown topic {topic!r}") from None

    def forget_topic(self, topic: str) -> None:
        """Drop a deleted topic from memory (by the writer, after the deletion committed)."""
        n = self.topics.pop(topic, 0)
        for p in range(n):
            self.partitions.pop(TopicPartition(topic, p), None)
        self.metrics.forget_topic(topic)
        self.metrics.topics.set(len(self.topics))

    def append(
        self,
        tp: TopicPartition,
        payload: bytes,
        count: int,
        producer_id: str = "",
        sequence: int = 0,
        fence: Fence | None = None,
        client: str = "",
    ) -> Future[AppendResult]:
        """Queue `client`'s batch for the writer; the future resolves once it is durable."""
        self._check_append(tp, payload, count)
        fut: Future[AppendResult] = Future()
        self.writer.submit(AppendOp(tp, payload, count, producer_id, sequence, fut, fence), client)
        return fut

    def barrier(self) -> None:
        """Block until everything queued so far is committed and visible in memory."""
        fut: Future[None] = Future()
        self.writer.submit(BarrierOp(fut))
        self.wait(fut, "barrier")

    def _check_append(self, tp: TopicPartition, payload: bytes, count: int) -> None:
        n = self.ensure_topic(tp.topic)
        if not 0 <= tp.partition < n:
            raise InvalidArgument(
                f"partition {tp.partition} out of range: topic {tp.topic!r} has {n} partitions"
            )
        config = self.config
        validate_batch(len(payload), count, config.max_batch_points, config.min_point_bytes)
        if len(payload) > config.max_batch_bytes:
            raise InvalidArgument(
                f"batch of {len(payload)} bytes exceeds the limit of {config.max_batch_bytes}"
            )
        if len(payload) > config.retention_bytes:
            raise ResourceExhausted("batch larger than the whole disk budget")
        self.disk.check(len(payload))

    def commit_offsets(self, group: str, topic: str, offsets: dict[int, int]) -> None:
        """Store committed offsets durably (blocks until the writer's transaction is synced)."""
        fut: Future[None] = Future()
        self.writer.submit(CommitOffsetsOp(group, topic, dict(offsets), fut))
        self.wait(fut, "offset commit")

    def enforce_retention(self, now_ns: int | None = None) -> None:
        """Delete what the retention policy says may go as of `now_ns` (default: the wall
        clock when the writer runs it); blocks until done."""
        fut: Future[None] = Future()
        self.writer.submit(RetentionOp(fut, now_ns))
        self.wait(fut, "retention")

    # ---- reads -------------------------------------------------------------------------

    def state(self, tp: TopicPartition) -> PartitionState:
        """The in-memory state of a partition, else NotFound."""
        try:
            return self.partitions[tp]
        except KeyError:
            raise NotFound(f"unknown partition {tp.topic}/{tp.partition}") from None

    def read(self, tp: TopicPartition, offset: int, max_points: int) -> list[Record]:
        """Records from the one holding `offset` on: about `max_points` points, at least one record.

        An offset below the log start reads from the log start; at or past the log end,
        nothing.
        """
        state = self.state(tp)
        info = state.info()
        offset = max(offset, info.log_start_offset)
        if offset >= info.log_end_offset:
            return []
        hot = state.read_hot(offset, max_points)
        if hot is not None:
            return hot
        return list(self._read_stored(tp, offset, max_points))

    def _read_stored(self, tp: TopicPartition, offset: int, max_points: int) -> Iterator[Record]:
        prefix = keys.partition_prefix(tp)
        with self.env.begin(db=self.db["records"]) as txn:
            cur = txn.cursor()
            if not self._seek_record(cur, prefix, offset):
                return
            points = 0
            for k, v in cur:
                if not k.startswith(prefix) or points >= max_points:
                    return
                t, n = keys.unpack_record_head(v)
                yield Record(keys.offset_of_key(k), n, t, bytes(v[keys.RECORD_HEADER_SIZE :]))
                points += n

    @staticmethod
    def _seek_record(cur: lmdb.Cursor, prefix: bytes, offset: int) -> bool:
        """Place `cur` on the record holding `offset` (or the first after it)."""
        key = prefix + keys.pack_u64(offset)
        found = cur.set_range(key)
        if found and cur.key() == key:
            return True
        moved = cur.prev() if found else cur.last()
        if moved and bytes(cur.key()).startswith(prefix):
            _, n = keys.unpack_record_head(cur.value())
            if keys.offset_of_key(bytes(cur.key())) + n > offset:
                return True
            return bool(cur.next()) and bytes(cur.key()).startswith(prefix)
        return cur.set_range(prefix) and bytes(cur.key()).startswith(prefix)

    def publish_time_at(self, tp: TopicPartition, offset: int) -> int:
        """Publish time of the record holding `offset`; 0 when there is none."""
        recs = self.read(tp, offset, 1)
        return recs[0].publish_time_ns if recs else 0

    def offset_for_time(self, tp: TopicPartition, time_ns: int) -> int:
        """Base offset of the first record published at or after `time_ns`; the log end if none."""
        state = self.state(tp)
        prefix = keys.partition_prefix(tp)
        with self.env.begin(db=self.db["timeindex"]) as txn:
            cur = txn.cursor()
            if cur.set_range(keys.time_key(tp, time_ns)) and cur.key().startswith(prefix):
                return max(keys.unpack_u64(cur.value()), state.info().log_start_offset)
        return state.info().log_end_offset

    def total_bytes(self) -> int:
        """Bytes of stored records over every partition."""
        return sum(s.size for s in self.partitions.values())

    # ---- change notification ------------------------------------------------------------

    def subscribe(self, event: threading.Event) -> None:
        """Set `event` whenever the log changes (appends, deletions, offset commits)."""
        with self._listeners_lock:
            self._listeners.add(event)

    def unsubscribe(self, event: threading.Event) -> None:
        """Stop notifying `event`."""
        with self._listeners_lock:
            self._listeners.discard(event)

    def notify(self) -> None:
        """Wake every subscriber (called by the writer after each commit)."""
        with self._listeners_lock:
            for event in self._listeners:
                event.set()


def now_ns() -> int:
    """Wall-clock time in ns (UTC epoch); one place so tests can reason about it."""
    return time.time_ns()

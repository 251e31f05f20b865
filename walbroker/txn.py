"""One LMDB write transaction of the writer, and the partition extents it stages until commit.

The writer applies many operations in one transaction; each sees the extents
(log start/end, bytes, publish times) as the earlier ones left them, and memory
is only updated from `extents` once the transaction is committed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import lmdb

from walbroker import keys
from walbroker.types import Record, TopicPartition

if TYPE_CHECKING:
    from walbroker.log import Log


@dataclass(slots=True)
class Extent:
    """A partition's extent as a transaction changes it, and the records it appended."""

    start: int
    end: int
    size: int
    first_ns: int
    last_ns: int
    new: list[Record] = field(default_factory=list)


class StagedTxn:
    """A write transaction plus what it changed, to publish to memory and metrics after commit."""

    def __init__(self, wal: Log, txn: lmdb.Transaction) -> None:
        self.wal = wal
        self.txn = txn
        self.extents: dict[TopicPartition, Extent] = {}
        self.deleted: dict[tuple[str, str], int] = {}
        self.enqueued: dict[str, int] = {}
        self.duplicates: dict[str, int] = {}
        self.topics: dict[str, int] = {}
        self.offsets: dict[tuple[str, TopicPartition], tuple[int, int]] = {}
        self.progress: dict[tuple[str, TopicPartition], tuple[int, int]] = {}
        self.deleted_topics: set[str] = set()
        self.deleted_groups: set[str] = set()
        # Legacy groups settled (marker gone), and those whose entries became progress.
        self.settled: set[str] = set()
        self.adopted: set[str] = set()

    def extent(self, tp: TopicPartition) -> Extent:
        """The partition's extent in this transaction (copied from memory on first use)."""
        ext = self.extents.get(tp)
        if ext is None:
            info = self.wal.state(tp).info()
            ext = Extent(
                info.log_start_offset,
                info.log_end_offset,
                info.size_bytes,
                info.first_publish_ns,
                info.last_publish_ns,
            )
            self.extents[tp] = ext
        return ext

    def total_bytes(self) -> int:
        """Bytes of stored records over every partition, as of this transaction."""
        staged = {tp: e.size for tp, e in self.extents.items()}
        return sum(staged.get(tp, s.size) for tp, s in self.wal.partitions.items())

    def put_extent(self, tp: TopicPartition, ext: Extent) -> None:
        """Write the partition's extent (the `parts` sub-database)."""
        self.txn.put(
            keys.partition_prefix(tp),
            keys.pack_partition(ext.start, ext.end, ext.size, ext.first_ns, ext.last_ns),
            db=self.wal.db["parts"],
        )

    def first_record(self, tp: TopicPartition) -> tuple[bytes, bytes] | None:
        """(key, value) of the partition's first record, seen through this transaction."""
        prefix = keys.partition_prefix(tp)
        cur = self.txn.cursor(db=self.wal.db["records"])
        if cur.set_range(prefix) and bytes(cur.key()).startswith(prefix):
            return bytes(cur.key()), bytes(cur.value())
        return None

    def delete_first(self, tp: TopicPartition, reason: str) -> None:
        """Delete the partition's first record (and its time-index entry); count it by reason."""
        ext = self.extent(tp)
        first = self.first_record(tp)
        if first is None:  # pragma: no cover - extents and records agree by construction
            raise LookupError(f"partition {tp} has no record to delete")
        key, value = first
        t, n = keys.unpack_record_head(value)
        self.txn.delete(key, db=self.wal.db["records"])
        self.txn.delete(keys.time_key(tp, t), db=self.wal.db["timeindex"])
        ext.start = keys.offset_of_key(key) + n
        ext.size -= len(key) + len(value)
        nxt = self.first_record(tp)
        ext.first_ns = keys.unpack_record_head(nxt[1])[0] if nxt else 0
        ext.new = [r for r in ext.new if r.base_offset >= ext.start]
        self.put_extent(tp, ext)
        self.deleted[(tp.topic, reason)] = self.deleted.get((tp.topic, reason), 0) + n

    def delete_topic(self, topic: str) -> None:
        """Delete a topic's records, time index, extents, producer state and offsets."""
        db, prefix = self.wal.db, topic.encode() + b"\x00"
        for name in ("records", "timeindex", "parts"):
            self._delete_prefixed(db[name], prefix)
        cur = self.txn.cursor(db=db["producers"])  # keys: producer_id NUL topic NUL p
        doomed = [bytes(k) for k in cur.iternext(values=False) if _topic_of(bytes(k)) == topic]
        for k in doomed:
            self.txn.delete(k, db=db["producers"])
        self.wal.offsets.stage_delete_topic(self, topic)
        self.txn.delete(topic.encode(), db=db["topics"])
        for tp in [tp for tp in self.extents if tp.topic == topic]:
            del self.extents[tp]
        self.deleted_topics.add(topic)

    def _delete_prefixed(self, db: lmdb._Database, prefix: bytes) -> None:
        cur = self.txn.cursor(db=db)
        if not cur.set_range(prefix):
            return
        while bytes(cur.key()).startswith(prefix):
            if not cur.delete():  # delete moves the cursor to the next key
                return


def _topic_of(key: bytes) -> str:
    """The topic of a `producers` key (producer_id NUL topic NUL u32)."""
    return key.split(b"\x00", 1)[1][:-5].decode()

"""Records polled but not yet flushed: their decoded points and the offsets a flush may commit.

A flush writes `merge(pending.batches())` and then commits `pending.offsets()`: for each
partition the next offset after the newest record held. Records of one partition arrive in
offset order and start at the member's position, so every offset below that one is stored
(or was dead-lettered) once the write succeeded. Not thread-safe: the collector loop owns it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TypeVar

from gputel.transport.base import Record
from proto.batch import PointBatch
from store.schema import GpuFields, gpu_fields

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class HeldRecord:
    """One polled record and its decoded points (None when it went to the dead-letter topic)."""

    message: Record
    batch: PointBatch | None

    @property
    def partition(self) -> int:
        """The record's partition."""
        return self.message.partition

    @property
    def points(self) -> int:
        """Points this record adds to the next write."""
        return 0 if self.batch is None else len(self.batch)


class Pending:
    """The records held for the next flush, in poll order."""

    def __init__(self) -> None:
        self.records: list[HeldRecord] = []
        self.points = 0
        self.since = 0.0  # monotonic time the oldest held record arrived

    def __len__(self) -> int:
        return len(self.records)

    def add(self, record: HeldRecord) -> None:
        """Hold one more record."""
        if not self.records:
            self.since = time.monotonic()
        self.records.append(record)
        self.points += record.points

    def age_s(self) -> float:
        """Seconds since the oldest held record arrived (0 when empty)."""
        return time.monotonic() - self.since if self.records else 0.0

    def batches(self) -> list[PointBatch]:
        """The decoded batches held, in poll order."""
        return [r.batch for r in self.records if r.batch is not None]

    def offsets(self) -> dict[int, int]:
        """Per partition, the offset to commit once everything held is stored."""
        out: dict[int, int] = {}
        for r in self.records:
            out[r.partition] = max(out.get(r.partition, 0), r.message.next_offset)
        return out

    def drop(self, partitions: set[int]) -> int:
        """Forget the records of `partitions` (uncommitted, so redelivered); return points."""
        kept = [r for r in self.records if r.partition not in partitions]
        dropped = self.points - sum(r.points for r in kept)
        self.records = kept
        self.points -= dropped
        return dropped

    def mark_dead(self, record: HeldRecord) -> None:
        """Keep `record`'s offset for the commit but no longer write its points."""
        self.records = [HeldRecord(r.message, None) if r is record else r for r in self.records]
        self.points -= record.points

    def clear(self) -> None:
        """Forget everything (after a flush committed it)."""
        self.records = []
        self.points = 0


def tail(batch: PointBatch, skip: int) -> PointBatch:
    """Return `batch` without its first `skip` points (already consumed before a reset)."""
    if skip <= 0:
        return batch
    return PointBatch(
        gpus=batch.gpus,
        metrics=batch.metrics,
        gpu_index=batch.gpu_index[skip:],
        metric_index=batch.metric_index[skip:],
        time_ns=batch.time_ns[skip:],
        value=batch.value[skip:],
        source_time_ns=batch.source_time_ns[skip:],
    )


def merge(batches: list[PointBatch]) -> PointBatch:
    """Concatenate batches into one, listing each GPU (by its tag values) and metric once.

    Stores do per-GPU work on every write (series keys, descriptor upserts), so a GPU that
    several records list is listed once here; the first record's entry wins.
    """
    if len(batches) == 1:
        return batches[0]
    out = PointBatch()
    gpu_slot: dict[GpuFields, int] = {}
    metric_slot: dict[str, int] = {}
    for b in batches:
        before = len(gpu_slot)
        gmap = _slots(gpu_slot, list(map(gpu_fields, b.gpus)))
        if len(gpu_slot) > before:  # the first entry of each new GPU, in slot order
            first = dict(zip(reversed(gmap), reversed(b.gpus), strict=True))
            out.gpus.extend(map(first.__getitem__, range(before, len(gpu_slot))))
        mmap = [_slot(metric_slot, m, m, out.metrics) for m in b.metrics]
        out.gpu_index.extend(_remap(b.gpu_index, gmap))
        out.metric_index.extend(_remap(b.metric_index, mmap))
        out.time_ns.extend(b.time_ns)
        out.value.extend(b.value)
        out.source_time_ns.extend(b.source_time_ns)
    return out


def _slot(slots: dict[K, int], key: K, item: V, items: list[V]) -> int:
    slot = slots.get(key)
    if slot is None:
        slot = slots[key] = len(items)
        items.append(item)
    return slot


def _slots(slots: dict[K, int], keys: list[K]) -> list[int]:
    """The slot of each key, new keys numbered on (C-level `setdefault`: one per GPU entry)."""
    add = slots.setdefault
    return [add(k, len(slots)) for k in keys]


def _remap(column: list[int], mapping: list[int]) -> list[int]:
    if mapping == list(range(len(mapping))):
        return column  # identity: the common case for the first record of a flush
    return list(map(mapping.__getitem__, column))

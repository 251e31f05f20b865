"""Offset resets: the plan (old -> new committed offset per partition) and applying it.

Transport-free. A target names where each partition goes — the log start
(`earliest`), the log end (`latest`), an absolute `offset`, the first record
published at or after a `time` (ns, the per-partition time index), or a `shift`
relative to the committed offset. Every new offset is clamped to the retained
range [log start offset, log end offset]; a clamped change says so.

Applying goes through `GroupCoordinator.reset`: live members are fenced (the
generation is bumped, so commits from before the reset are rejected) and
resume from the new offsets without restarting.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from walbroker.errors import InvalidArgument, NotFound
from walbroker.group import GroupCoordinator
from walbroker.log import Log
from walbroker.types import PartitionInfo, TopicPartition, validate_name

TargetKind = Literal["earliest", "latest", "offset", "time", "shift"]


@dataclass(frozen=True, slots=True)
class ResetTarget:
    """Where to move offsets; `value` is the offset, the time in ns or the shift."""

    kind: TargetKind
    value: int = 0


@dataclass(frozen=True, slots=True)
class OffsetChange:
    """One partition of a plan; `requested_offset` is the target before clamping."""

    partition: int
    old_offset: int | None
    new_offset: int
    requested_offset: int
    log_start_offset: int
    log_end_offset: int

    @property
    def clamped(self) -> bool:
        """True when the target lay outside the retained range."""
        return self.new_offset != self.requested_offset


def plan_reset(
    wal: Log,
    coordinator: GroupCoordinator,
    group: str,
    topic: str,
    partitions: Iterable[int],
    target: ResetTarget,
) -> list[OffsetChange]:
    """The changes a reset would make (nothing is written); NotFound / InvalidArgument."""
    _check_group(wal, coordinator, group, topic)
    n = wal.partition_count(topic)
    chosen = sorted(set(partitions)) or list(range(n))
    bad = [p for p in chosen if not 0 <= p < n]
    if bad:
        raise InvalidArgument(f"topic {topic!r} has partitions 0..{n - 1}, not {bad}")
    return [_change(wal, group, TopicPartition(topic, p), target) for p in chosen]


def apply_reset(
    coordinator: GroupCoordinator, group: str, topic: str, changes: list[OffsetChange]
) -> None:
    """Commit the planned offsets; live members are fenced and resume from them."""
    if changes:
        coordinator.reset(group, topic, {c.partition: c.new_offset for c in changes})


def _check_group(wal: Log, coordinator: GroupCoordinator, group: str, topic: str) -> None:
    validate_name("group", group)
    validate_name("topic", topic)
    wal.partition_count(topic)
    view = coordinator.describe(group)
    committed_topics = {tp.topic for g, tp in wal.offsets.committed_entries() if g == group}
    if view is None and any(g == group for g, _ in wal.offsets.progress_entries()):
        raise InvalidArgument(f"group {group!r} is a producer group: it has no offsets")
    if view is None and not committed_topics:
        raise NotFound(f"unknown group {group!r}")
    if view is not None and view.role != "consumer":
        raise InvalidArgument(f"group {group!r} is a {view.role} group: it has no offsets")
    if view is not None and view.topic != topic:
        raise InvalidArgument(f"group {group!r} consumes topic {view.topic!r}, not {topic!r}")
    if view is None and topic not in committed_topics:
        raise NotFound(f"group {group!r} has no committed offsets on topic {topic!r}")


def _change(wal: Log, group: str, tp: TopicPartition, target: ResetTarget) -> OffsetChange:
    info = wal.state(tp).info()
    old = wal.offsets.committed(group, tp)
    requested = _requested(wal, tp, info, old, target)
    new = min(max(requested, info.log_start_offset), info.log_end_offset)
    return OffsetChange(
        tp.partition, old, new, requested, info.log_start_offset, info.log_end_offset
    )


def _requested(
    wal: Log, tp: TopicPartition, info: PartitionInfo, old: int | None, target: ResetTarget
) -> int:
    if target.kind == "earliest":
        return info.log_start_offset
    if target.kind == "latest":
        return info.log_end_offset
    if target.kind == "offset":
        return target.value
    if target.kind == "time":
        return wal.offset_for_time(tp, target.value)
    return (info.log_start_offset if old is None else old) + target.value

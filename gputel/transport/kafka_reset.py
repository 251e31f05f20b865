"""Offset resets (`reset-offsets`, `replay`) of a Kafka consumer group.

The plan is walbroker's (walbroker/reset.py): each partition moves to the log start, the log end,
an offset, the first record at or after a time, or by a shift from the committed offset, clamped
to the retained range. Applying differs: walbroker fences live members and they follow; Kafka
refuses to change the offsets of a group that has members. So a reset with members is refused
before anything is asked of Kafka, with the members to stop named (a dry run still shows the
plan), and a member that joins between the check and the change makes Kafka refuse it the same
way. The group's collectors resume from the new offsets when they start again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from gputel.transport.kafka_lag import GroupOffsets, at_time, extents, stop_members_message
from proto.gen import walbroker_admin_pb2 as apb
from walbroker.errors import InUse, InvalidArgument
from walbroker.reset import ResetTarget

if TYPE_CHECKING:
    from gputel.transport.kafka_admin import KafkaAdmin


def plan_and_apply(
    admin: KafkaAdmin,
    g: GroupOffsets,
    topic: str,
    partitions: Iterable[int],
    target: ResetTarget,
    dry_run: bool,
) -> apb.ResetOffsetsResponse:
    """The plan for group `g` on `topic`, applied unless `dry_run` (InUse while it has members)."""
    if g.simple:
        raise InvalidArgument(
            f"group {g.group!r} is a producer group (the streamers' progress): it has no offsets"
        )
    n = admin.partition_counts([topic])[topic]
    chosen = sorted(set(partitions)) or list(range(n))
    bad = [p for p in chosen if not 0 <= p < n]
    if bad:
        raise InvalidArgument(f"topic {topic!r} has partitions 0..{n - 1}, not {bad}")
    if g.members and not dry_run:
        raise InUse(stop_members_message(g, "reset it"))
    changes = _plan(admin, g, [(topic, p) for p in chosen], target)
    if not dry_run:
        admin.alter_offsets(g, topic, {c.partition: c.new_offset for c in changes})
    return apb.ResetOffsetsResponse(
        group=g.group, topic=topic, changes=changes, applied=not dry_run
    )


def _plan(
    admin: KafkaAdmin, g: GroupOffsets, keys: list[tuple[str, int]], target: ResetTarget
) -> list[apb.OffsetChange]:
    start, end = extents(admin, keys)
    if target.kind == "time":
        # Kafka's time index: the first offset whose timestamp is >= the time (ms); -1 when none.
        found = admin.offsets(keys, at_time(target.value // 1_000_000))
    changes = []
    for k in keys:
        old = g.committed.get(k)
        if target.kind == "earliest":
            requested = start[k]
        elif target.kind == "latest":
            requested = end[k]
        elif target.kind == "offset":
            requested = target.value
        elif target.kind == "time":
            requested = found[k] if found[k] >= 0 else end[k]
        else:
            requested = (start[k] if old is None else old) + target.value
        new = min(max(requested, start[k]), end[k])
        change = apb.OffsetChange(
            partition=k[1],
            new_offset=new,
            requested_offset=requested,
            clamped=new != requested,
            log_start_offset=start[k],
            log_end_offset=end[k],
        )
        if old is not None:
            change.old_offset = old
        changes.append(change)
    return changes

"""Extents and lag of Kafka partitions, as walbroker admin's messages (used by kafka_admin).

Words as in walbroker (docs/admin.md): the log end offset is the next offset to be written (here
Kafka's last stable offset), the committed offset is the next one the group will read, lag =
log end offset - committed offset (the log start offset when the group never committed), and lag
in seconds is the age of the oldest record not yet committed. On Kafka these count records.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from confluent_kafka.admin._listoffsets import OffsetSpec

from proto.gen import walbroker_admin_pb2 as apb

if TYPE_CHECKING:
    from gputel.transport.kafka_admin import KafkaAdmin

Key = tuple[str, int]
# confluent-kafka leaves these constructors unannotated.
EARLIEST: OffsetSpec = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
LATEST: OffsetSpec = OffsetSpec.latest()  # type: ignore[no-untyped-call]
NEWEST: OffsetSpec = OffsetSpec.max_timestamp()  # type: ignore[no-untyped-call]


def at_time(ms: int) -> OffsetSpec:
    """The first offset whose record timestamp is at or after `ms` (ms since the epoch)."""
    return OffsetSpec.for_timestamp(ms)  # type: ignore[no-untyped-call, no-any-return]


@dataclass(frozen=True, slots=True)
class GroupOffsets:
    """A consumer group as Kafka describes it: state, members and committed offsets."""

    group: str
    state: str
    members: Sequence[Any] = ()  # confluent_kafka MemberDescription
    committed: Mapping[Key, int] = field(default_factory=dict)
    # No consumer protocol, only committed offsets: on gputel the streamers' progress, which
    # their transactions commit (`send_offsets_to_transaction`) without ever joining.
    simple: bool = False

    def topics(self) -> list[str]:
        """Topics the group has offsets on or is assigned partitions of."""
        assigned = {tp.topic for m in self.members for tp in m.assignment.topic_partitions}
        return sorted(assigned | {t for t, _ in self.committed})

    def owner(self, key: Key) -> str:
        """The member id owning partition `key` now ("" when none)."""
        for m in self.members:
            if any((tp.topic, tp.partition) == key for tp in m.assignment.topic_partitions):
                return str(m.member_id)
        return ""


def extents(admin: KafkaAdmin, keys: list[Key]) -> tuple[dict[Key, int], dict[Key, int]]:
    """Log start and log end offsets of each partition."""
    return admin.offsets(keys, EARLIEST), admin.offsets(keys, LATEST)


def partition_rows(
    admin: KafkaAdmin, counts: Mapping[str, int]
) -> dict[str, list[apb.PartitionExtent]]:
    """Per topic, one extent per partition: offsets and the oldest and newest record times."""
    keys = [(t, p) for t, n in counts.items() for p in range(n)]
    start, end = extents(admin, keys)
    newest = admin.newest_times_ns(keys)
    oldest = admin.record_times_ns({k: start[k] for k in keys if end[k] > start[k]})
    rows: dict[str, list[apb.PartitionExtent]] = {t: [] for t in counts}
    for t, p in keys:
        rows[t].append(
            apb.PartitionExtent(
                partition=p,
                log_start_offset=start[(t, p)],
                log_end_offset=end[(t, p)],
                first_publish_ns=oldest.get((t, p), 0),
                last_publish_ns=newest.get((t, p), 0) if end[(t, p)] > start[(t, p)] else 0,
            )
        )
    return rows


def group_rows(
    admin: KafkaAdmin, groups: Sequence[GroupOffsets]
) -> list[tuple[apb.GroupSummary, list[apb.PartitionLag]]]:
    """For each group, its summary and its lag per partition of every topic it touches."""
    topics = sorted({t for g in groups for t in g.topics()})
    counts = admin.partition_counts(topics) if topics else {}
    keys = [(t, p) for t, n in counts.items() for p in range(n)]
    start, end = extents(admin, keys)
    positions = {
        (g.group, k): g.committed.get(k, start[k])
        for g in groups
        for k in keys
        if k[0] in g.topics()
    }
    simple = {g.group for g in groups if g.simple}
    waiting = {gk: pos for gk, pos in positions.items() if end[gk[1]] > pos and gk[0] not in simple}
    times = _times_by_group(admin, waiting)
    now_ns = time.time_ns()
    out = []
    for g in groups:
        lags = [
            _lag(g, k, end[k], positions[(g.group, k)], times.get((g.group, k)), now_ns)
            for k in keys
            if (g.group, k) in positions
        ]
        out.append((_group_summary(g, lags), lags))
    return out


def _times_by_group(
    admin: KafkaAdmin, waiting: Mapping[tuple[str, Key], int]
) -> dict[tuple[str, Key], int]:
    # One read per distinct position: groups at the same offset share the record's time.
    distinct: dict[Key, set[int]] = {}
    for (_, k), pos in waiting.items():
        distinct.setdefault(k, set()).add(pos)
    times: dict[tuple[Key, int], int] = {}
    for round_ in range(max((len(v) for v in distinct.values()), default=0)):
        batch = {k: sorted(v)[round_] for k, v in distinct.items() if len(v) > round_}
        for k, ns in admin.record_times_ns(batch).items():
            times[(k, batch[k])] = ns
    return {gk: times[(gk[1], pos)] for gk, pos in waiting.items() if (gk[1], pos) in times}


def _lag(
    g: GroupOffsets, k: Key, end: int, position: int, oldest_ns: int | None, now_ns: int
) -> apb.PartitionLag:
    # A producer group's committed offset is its progress in its source, not a log offset:
    # it has no lag (as walbroker reports its producer groups).
    lagging = not g.simple
    row = apb.PartitionLag(
        topic=k[0],
        partition=k[1],
        owner=g.owner(k),
        log_end_offset=end,
        lag_points=max(end - position, 0) if lagging else 0,
        lag_seconds=max(now_ns - oldest_ns, 0) / 1e9 if oldest_ns and lagging else 0.0,
    )
    if k in g.committed:
        row.committed_offset = g.committed[k]
    return row


def _group_summary(g: GroupOffsets, lags: list[apb.PartitionLag]) -> apb.GroupSummary:
    return apb.GroupSummary(
        name=g.group,
        topic=",".join(g.topics()),
        role="producer" if g.simple else "consumer",
        state=g.state,
        members=len(g.members),
        lag_points=sum(r.lag_points for r in lags),
        lag_seconds=max((r.lag_seconds for r in lags), default=0.0),
    )


def stop_members_message(g: GroupOffsets, action: str) -> str:
    """What to stop before Kafka lets an admin change group `g`'s offsets."""
    who = ", ".join(
        f"{m.client_id or '?'} on {m.host or '?'} (member {m.member_id})" for m in g.members
    )
    return (
        f"group {g.group!r} has {len(g.members)} active member(s): {who or 'joining now'}. Kafka "
        f"refuses to {action} while the group has members: stop every consumer of group "
        f"{g.group!r} first (the chart's collectors: kubectl scale deployment "
        f"<release>-collector --replicas=0; else stop each gputel-collector with --group "
        f"{g.group}), run this again, then start them; they resume from the new offsets"
    )

"""Where consumer groups stand: committed offset, log end offset and lag per partition; group state.

Transport-free. The admin service (`groups`, `describe-group`) and the broker's
lag metrics both call `group_lags`, so what an operator reads and what Prometheus
scrapes are computed the same way.

A group is *known* when it has live state in the coordinator (a member joined
since the broker started), a committed offset or (a producer group) progress in
the log. Producer groups have no lag: their progress counts source rows, not
log offsets. Lag is counted from
the committed offset, or from the log start offset where a consumer group never
committed (that is where its members start). Lag in seconds is the age of the
oldest record not yet committed: now minus the publish time of the record
holding the committed offset.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from walbroker.group import GroupCoordinator, GroupView
from walbroker.log import Log
from walbroker.types import TopicPartition


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """A group's standing on one partition."""

    group: str
    tp: TopicPartition
    committed: int | None
    log_end_offset: int
    lag_points: int
    lag_seconds: float

    @property
    def position(self) -> int:
        """Where the group resumes: the committed offset, else the log start it started from."""
        return self.log_end_offset - self.lag_points


@dataclass(frozen=True, slots=True)
class GroupStanding:
    """A group on one topic: state, generation, live members and total lag."""

    group: str
    topic: str
    role: str
    state: str
    generation: int
    members: int
    lag_points: int
    lag_seconds: float
    ignored_by_retention: bool = False


def group_lags(
    wal: Log, coordinator: GroupCoordinator, group: str | None = None, now_ns: int | None = None
) -> list[PartitionLag]:
    """Lag of every (group, partition) with a committed offset or a live consumer group.

    `group` restricts the result to one group. Sorted by group, topic, partition.
    """
    now = time.time_ns() if now_ns is None else now_ns
    pairs = {k for k in wal.offsets.committed_entries() if group is None or k[0] == group}
    for name in coordinator.groups() if group is None else [group]:
        view = coordinator.describe(name)
        if view is not None and view.role == "consumer":
            n = wal.topics.get(view.topic, 0)
            pairs.update((name, TopicPartition(view.topic, p)) for p in range(n))
    ordered = sorted(pairs, key=lambda k: (k[0], k[1].topic, k[1].partition))
    return [_lag(wal, g, tp, now) for g, tp in ordered]


def _lag(wal: Log, group: str, tp: TopicPartition, now_ns: int) -> PartitionLag:
    info = wal.state(tp).info()
    committed = wal.offsets.committed(group, tp)
    position = info.log_start_offset if committed is None else committed
    lag = max(info.log_end_offset - position, 0)
    age = 0.0
    if lag:
        t = wal.publish_time_at(tp, position)
        age = max(now_ns - t, 0) / 1e9 if t else 0.0
    return PartitionLag(group, tp, committed, info.log_end_offset, lag, age)


def producer_progress(wal: Log, group: str, now_ns: int | None = None) -> list[PartitionLag]:
    """A producer group's progress per partition, as rows without lag.

    Progress is a position in the group's source, not a log offset: it is shown as
    the row's `committed` and never subtracted from a log end offset.
    """
    rows = [
        PartitionLag(g, tp, progress, wal.state(tp).info().log_end_offset, 0, 0.0)
        for (g, tp), (progress, _t) in wal.offsets.progress_entries().items()
        if g == group and tp in wal.partitions
    ]
    return sorted(rows, key=lambda r: (r.tp.topic, r.tp.partition))


def known_groups(wal: Log, coordinator: GroupCoordinator) -> dict[str, set[str]]:
    """Every known group and the topics it is on (live topic plus topics with commits)."""
    topics: dict[str, set[str]] = defaultdict(set)
    for g, tp in [*wal.offsets.committed_entries(), *wal.offsets.progress_entries()]:
        topics[g].add(tp.topic)
    for name in coordinator.groups():
        view = coordinator.describe(name)
        if view is not None:
            topics[name].add(view.topic)
    return dict(topics)


def group_state(view: GroupView | None, partition_count: int) -> str:
    """stable, rebalancing (some partition is being handed over) or empty (no live member)."""
    if view is None or not view.members:
        return "empty"
    owned = {p for m in view.members for p in m.partitions}
    return "stable" if len(owned) >= partition_count else "rebalancing"


def group_standings(
    wal: Log, coordinator: GroupCoordinator, group: str | None = None
) -> list[GroupStanding]:
    """One standing per known (group, topic), or only `group`'s; sorted by group and topic."""
    lags = group_lags(wal, coordinator, group)
    known = known_groups(wal, coordinator)
    names = sorted(known) if group is None else [group] if group in known else []
    out: list[GroupStanding] = []
    for name in names:
        view = coordinator.describe(name)
        for topic in sorted(known[name]):
            live = view if view is not None and view.topic == topic else None
            rows = [r for r in lags if r.group == name and r.tp.topic == topic]
            out.append(
                GroupStanding(
                    name,
                    topic,
                    live.role if live else "",
                    group_state(live, wal.topics.get(topic, 0)),
                    live.generation if live else 0,
                    len(live.members) if live else 0,
                    sum(r.lag_points for r in rows),
                    max((r.lag_seconds for r in rows), default=0.0),
                    name in wal.retention_ignored,
                )
            )
    return out

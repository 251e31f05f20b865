"""Group retention: empty groups expire, and idle empty groups stop holding `block` retention back.

A group is *empty* when no member is connected; its *last activity* is the later
of its last offset commit and the moment its last member left. Kafka forgets an
empty group's offsets after `offsets.retention.minutes` (7 days); so does the
broker after `--group-retention-s`. Before that, under `block` retention, a group
idle for longer than `--retention-ignore-idle-group-s` no longer keeps records
from being deleted: one consumer that committed once and went away must not
stop every producer for good. Both are decided by the broker's group-reaper loop;
the log's writer only reads the resulting set (`Log.retention_ignored`).

Transport-free; called from the group-reaper thread.
"""

from __future__ import annotations

import logging

from walbroker.group import GroupCoordinator
from walbroker.log import Log
from walbroker.metrics import BrokerMetrics

log = logging.getLogger(__name__)


def last_activity_ns(wal: Log, coordinator: GroupCoordinator) -> dict[str, int]:
    """Every known group without a live member, and its last activity (wall-clock ns)."""
    latest: dict[str, int] = {}
    offsets = wal.offsets
    for (group, _tp), (_offset, t) in [
        *offsets.committed_entries().items(),
        *offsets.progress_entries().items(),
    ]:
        latest[group] = max(latest.get(group, 0), t)
    for name in coordinator.groups():
        since = coordinator.empty_since_ns(name)
        if since is None and coordinator.member_count(name):
            latest[name] = -1  # live: neither expired nor ignored
        elif since is not None:
            latest[name] = max(latest.get(name, 0), since)
    return {g: t for g, t in latest.items() if t >= 0}


def expire_groups(
    wal: Log, coordinator: GroupCoordinator, metrics: BrokerMetrics, retention_s: float, now_ns: int
) -> list[str]:
    """Forget every empty group idle for longer than `retention_s`; return their names."""
    cutoff = now_ns - int(retention_s * 1e9)
    expired = []
    for group, t in sorted(last_activity_ns(wal, coordinator).items()):
        if t >= cutoff or not coordinator.remove_if_empty(group):
            continue
        if wal.offsets.keys_of(group):
            wal.delete_group_offsets(group)
        metrics.groups_expired.labels("retention").inc()
        metrics.forget_group(group)
        log.info("empty group expired", extra={"group": group, "idle_s": (now_ns - t) / 1e9})
        expired.append(group)
    return expired


def update_retention_ignored(
    wal: Log, coordinator: GroupCoordinator, metrics: BrokerMetrics, bound_s: float, now_ns: int
) -> frozenset[str]:
    """Recompute the idle groups `block` retention ignores; log each group once as it joins."""
    if bound_s <= 0:
        ignored: frozenset[str] = frozenset()
    else:
        cutoff = now_ns - int(bound_s * 1e9)
        idle = last_activity_ns(wal, coordinator)
        ignored = frozenset(g for g, t in idle.items() if t < cutoff)
    for group in sorted(ignored - wal.retention_ignored):
        log.warning(
            "block retention ignores an idle empty group",
            extra={"group": group, "bound_s": bound_s},
        )
    wal.retention_ignored = ignored
    metrics.retention_ignored_groups.set(len(ignored))
    return ignored

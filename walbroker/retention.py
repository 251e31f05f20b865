"""Retention: what may be deleted, by age and to keep the disk budget, under each policy.

`block` (the default) deletes, to make room, only records that every group on
the topic has committed past (groups idle and empty for longer than
`--retention-ignore-idle-group-s` excepted, see `walbroker.group_retention`);
when nothing may go, the append is refused with RESOURCE_EXHAUSTED.
`drop-oldest` deletes the oldest records regardless and counts them. Age
retention (`retention_age_s`) deletes under both policies.
All of it runs inside the writer's transaction (`StagedTxn`).
"""

from __future__ import annotations

import time

from walbroker import keys
from walbroker.errors import ResourceExhausted
from walbroker.txn import StagedTxn
from walbroker.types import TopicPartition


def make_room(staged: StagedTxn, need: int) -> None:
    """Delete what the policy allows until `need` more bytes fit the budget, else refuse."""
    config = staged.wal.config
    while staged.total_bytes() + need > config.retention_bytes:
        victim = oldest_deletable(staged)
        if victim is None:
            raise ResourceExhausted(
                f"disk budget of {config.retention_bytes} bytes is full (policy "
                f"{config.retention_policy}); consumers must commit to free space",
                retry_after_ms=config.retry_after_ms,
            )
        staged.delete_first(victim, "size")


def oldest_deletable(staged: StagedTxn) -> TopicPartition | None:
    """The partition whose first record is oldest and may be deleted under the policy."""
    block = staged.wal.config.retention_policy == "block"
    best: tuple[int, TopicPartition] | None = None
    for tp in staged.wal.partitions:
        if tp.topic in staged.deleted_topics:
            continue
        ext = staged.extent(tp)
        if ext.start == ext.end or (block and not consumed(staged, tp)):
            continue
        if best is None or ext.first_ns < best[0]:
            best = (ext.first_ns, tp)
    return best[1] if best else None


def consumed(staged: StagedTxn, tp: TopicPartition) -> bool:
    """True when every group on the topic has committed past the partition's first record."""
    wal = staged.wal
    groups = wal.offsets.groups_on(tp.topic)
    groups |= {g for g, t in staged.offsets if t.topic == tp.topic}
    first = staged.first_record(tp)
    if not groups or first is None:
        return False
    limit = keys.offset_of_key(first[0]) + keys.unpack_record_head(first[1])[1]
    for g in groups - wal.retention_ignored:  # idle empty groups do not hold records back
        entry = staged.offsets.get((g, tp))
        committed = entry[0] if entry else wal.offsets.committed(g, tp)
        if committed is None or committed < limit:
            return False
    return True


def delete_aged(staged: StagedTxn, now_ns: int | None = None) -> None:
    """Delete every record published before `now_ns` (default: now) minus the retention age."""
    now = time.time_ns() if now_ns is None else now_ns
    cutoff = now - int(staged.wal.config.retention_age_s * 1e9)
    for tp in list(staged.wal.partitions):
        ext = staged.extent(tp)
        while ext.start < ext.end and ext.first_ns and ext.first_ns < cutoff:
            staged.delete_first(tp, "age")

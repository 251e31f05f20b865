"""The group coordinator: membership, generations, sticky assignment, fencing and offset commits.

Consumer groups (members receive records) and producer groups (members only
receive assignments, e.g. streamers sharing GPUs by partition) use the same
coordinator. Every membership change or offset reset bumps the group's
*generation*; commits carrying an older generation are rejected, so a fenced
member can never move an offset.

Rebalancing is cooperative (incremental): a partition moving from member A to
member B is first *revoked* — left out of A's new assignment but still owned by
A, who may commit it — and only given to B once A *releases* it (after
flushing and committing), leaves, or misses its session timeout, or after
`rebalance_timeout_s`. So no two live members ever work on one partition,
and a producer group (streamers) can hand a GPU over without sending a row twice.

Thread-safety: every public method may be called from any thread. The registry
of groups has its own lock; each group's state is guarded by the group's lock,
which is also held while a commit is written to the log, so a commit and an
admin reset can never interleave. Listeners are called under the group lock:
they enqueue for their stream, except that a producer-group member's listener
waits for a log barrier (`Log.barrier`, one group commit at most, bounded by the
writer timeout) so its new partitions resume after every batch queued before the
grant. The log's writer never takes a group lock (fencing reads the grant epochs
in `walbroker.grants`, which this coordinator writes), so this wait cannot
deadlock; it holds only this group's lock.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from walbroker.assignor import assign
from walbroker.errors import (
    InvalidArgument,
    NotAssigned,
    NotFound,
    ResourceExhausted,
    StaleGeneration,
)
from walbroker.log import Log
from walbroker.metrics import BrokerMetrics
from walbroker.types import TopicPartition, validate_name

log = logging.getLogger(__name__)

Role = Literal["consumer", "producer"]
# Partitions a refusal lists by number (the rest are counted).
MAX_LISTED = 16


@dataclass(frozen=True, slots=True)
class MemberAssignment:
    """What one member owns in one generation; `restarted` partitions resume from committed."""

    group: str
    topic: str
    member_id: str
    generation: int
    partitions: frozenset[int]
    restarted: frozenset[int]
    partition_count: int
    # partition -> its grant epoch (unique per grant, also across broker restarts)
    epochs: Mapping[int, int] = field(default_factory=dict)


Listener = Callable[[MemberAssignment], None]


@dataclass(slots=True)
class Member:
    """A live member of a group."""

    member_id: str
    client_id: str
    session_timeout_s: float
    listener: Listener
    last_seen: float
    partitions: frozenset[int] = frozenset()
    host: str = ""


@dataclass(slots=True)
class Group:
    """A group's live state; guarded by `lock`."""

    name: str
    topic: str
    role: Role
    partition_count: int
    generation: int = 0
    members: dict[str, Member] = field(default_factory=dict)
    # partition -> the member holding it: granted, or revoked but not yet released
    owners: dict[int, str] = field(default_factory=dict)
    # partition -> when its revocation started (monotonic clock)
    revoking: dict[int, float] = field(default_factory=dict)
    # Wall-clock ns since the group has had no member (its retention starts there).
    empty_since_ns: int = field(default_factory=time.time_ns)
    lock: threading.RLock = field(default_factory=threading.RLock)


@dataclass(frozen=True, slots=True)
class MemberView:
    """A member as admin tools see it."""

    member_id: str
    client_id: str
    partitions: tuple[int, ...]
    host: str = ""


@dataclass(frozen=True, slots=True)
class GroupView:
    """A group as admin tools see it."""

    name: str
    topic: str
    role: Role
    generation: int
    state: str
    members: tuple[MemberView, ...]


class GroupCoordinator:
    """Keeps every group's members and assignment; validates and stores commits."""

    def __init__(
        self,
        wal: Log,
        metrics: BrokerMetrics,
        clock: Callable[[], float] = time.monotonic,
        rebalance_timeout_s: float = 30.0,
        max_groups: int = 0,
    ) -> None:
        self.wal = wal
        # Known groups (live, or with committed offsets or progress) a join may bring the
        # count to; a join creating one more is refused (0 = no limit).
        self.max_groups = max_groups
        # Grant epochs live beside the log (its writer fences batches with them); only
        # this coordinator writes them.
        self.grants = wal.grants
        self.rebalance_timeout_s = rebalance_timeout_s
        self.metrics = metrics
        self.clock = clock
        self._groups: dict[str, Group] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        # Grant epochs start at the wall clock in µs, so they never repeat across restarts.
        self._epochs = itertools.count(time.time_ns() // 1000)

    # ---- membership ----------------------------------------------------------------------

    def join(
        self,
        group: str,
        topic: str,
        role: Role,
        *,
        client_id: str = "",
        member_id: str = "",
        session_timeout_ms: int = 10_000,
        listener: Listener,
        host: str = "",
    ) -> str:
        """Add a member (or re-add a known member id) and rebalance; return the member id."""
        validate_name("group", group)
        if not 100 <= session_timeout_ms <= 600_000:
            raise InvalidArgument("session_timeout_ms must be in 100..600000")
        partitions = self.wal.ensure_topic(topic)
        if self.wal.offsets.is_legacy(group):  # written by an older broker: settle it first
            self.wal.settle_legacy_group(group, role)
        g = self._group(group, topic, role, partitions)
        with g.lock:
            if self._groups.get(group) is not g:  # expired or deleted meanwhile: start afresh
                return self.join(
                    group,
                    topic,
                    role,
                    client_id=client_id,
                    member_id=member_id,
                    session_timeout_ms=session_timeout_ms,
                    listener=listener,
                )
            if g.topic != topic or g.role != role:
                raise InvalidArgument(f"group {group!r} is a {g.role} group of topic {g.topic!r}")
            mid = member_id or f"{client_id or 'member'}-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
            old = g.members.pop(mid, None)
            g.members[mid] = Member(
                mid,
                client_id,
                session_timeout_ms / 1000,
                listener,
                self.clock(),
                old.partitions if old else frozenset(),
                host,
            )
            self._rebalance(g, reason="join")
        return mid

    def leave(self, group: str, member_id: str, reason: str = "leave") -> None:
        """Remove a member and rebalance; unknown members are ignored."""
        g = self._groups.get(group)
        if g is None:
            return
        with g.lock:
            if g.members.pop(member_id, None) is not None:
                self._disown(g, member_id)
                self._rebalance(g, reason=reason)
                if not g.members:
                    g.empty_since_ns = time.time_ns()

    def release(self, group: str, member_id: str, partitions: set[int]) -> None:
        """A member hands back revoked partitions; their new owners get them now."""
        g = self._get(group)
        with g.lock:
            member = g.members.get(member_id)
            held = member.partitions if member else frozenset()
            freed = [p for p in partitions if g.owners.get(p) == member_id and p not in held]
            for p in freed:
                del g.owners[p]
                g.revoking.pop(p, None)
                self.grants.revoke(g.name, p)
            if freed:
                self._rebalance(g, reason="release")

    def _disown(self, g: Group, member_id: str) -> None:
        for p in [p for p, m in g.owners.items() if m == member_id]:
            del g.owners[p]
            g.revoking.pop(p, None)
            self.grants.revoke(g.name, p)

    def heartbeat(self, group: str, member_id: str) -> None:
        """Keep a member's session alive; NotFound if it was removed."""
        g = self._get(group)
        with g.lock:
            member = g.members.get(member_id)
            if member is None:
                raise NotFound(f"member {member_id!r} is not in group {group!r}")
            member.last_seen = self.clock()

    def expire(self) -> list[str]:
        """Remove members whose session timed out; return their ids."""
        expired: list[str] = []
        now = self.clock()
        for g in self._all():
            with g.lock:
                dead = [m for m in g.members.values() if now - m.last_seen > m.session_timeout_s]
                for m in dead:
                    del g.members[m.member_id]
                    self._disown(g, m.member_id)
                    expired.append(m.member_id)
                    log.warning(
                        "member session expired", extra={"group": g.name, "member": m.member_id}
                    )
                stuck = [p for p, t in g.revoking.items() if now - t > self.rebalance_timeout_s]
                for p in stuck:
                    log.warning(
                        "revoked partition not released in time; reassigning",
                        extra={"group": g.name, "partition": p, "member": g.owners.get(p)},
                    )
                    g.owners.pop(p, None)
                    self.grants.revoke(g.name, p)
                    del g.revoking[p]
                if dead or stuck:
                    self._rebalance(g, reason="session timeout")
                if dead and not g.members:
                    g.empty_since_ns = time.time_ns()
        return expired

    def _rebalance(self, g: Group, reason: str, reset: frozenset[int] = frozenset()) -> None:
        """Bump the generation, reassign (sticky, cooperative) and notify. Caller holds g.lock."""
        g.generation += 1
        self.metrics.rebalances.labels(g.name).inc()
        previous = {mid: m.partitions for mid, m in g.members.items()}
        holding = {mid: {p for p, o in g.owners.items() if o == mid} for mid in g.members}
        plan = assign(g.partition_count, sorted(g.members), holding)
        now = self.clock()
        for mid, m in g.members.items():
            granted = frozenset(p for p in plan[mid] if g.owners.get(p, mid) == mid)
            for p in holding[mid] - plan[mid]:
                g.revoking.setdefault(p, now)
            for p in granted:
                if g.owners.get(p) != mid:
                    self.grants.grant(g.name, p, next(self._epochs))
                g.owners[p] = mid
                g.revoking.pop(p, None)
            m.partitions = granted
        for mid, m in g.members.items():
            restarted = (m.partitions - previous[mid]) | (m.partitions & reset)
            epochs = self.grants.of_group(g.name, m.partitions)
            m.listener(
                MemberAssignment(
                    g.name,
                    g.topic,
                    mid,
                    g.generation,
                    m.partitions,
                    restarted,
                    g.partition_count,
                    epochs,
                )
            )
        log.info(
            "group rebalanced",
            extra={
                "group": g.name,
                "generation": g.generation,
                "members": len(g.members),
                "reason": reason,
                "revoking": sorted(g.revoking),
            },
        )

    # ---- offsets -------------------------------------------------------------------------

    def commit(self, group: str, member_id: str, generation: int, offsets: dict[int, int]) -> None:
        """Store offsets for partitions the member owns in the current generation."""
        g = self._get(group)
        with g.lock:
            if g.role != "consumer":  # a producer group's progress travels with its batches
                raise InvalidArgument(
                    f"group {group!r} is a producer group: its progress is stored with each "
                    "fenced batch, not committed"
                )
            if generation != g.generation:
                self.metrics.commits.labels(group, "stale").inc()
                raise StaleGeneration(
                    f"generation {generation} is stale; the group is at {g.generation}"
                )
            member = g.members.get(member_id)
            foreign = sorted(p for p in offsets if g.owners.get(p) != member_id)
            if member is None or foreign:
                self.metrics.commits.labels(group, "not_assigned").inc()
                shown = ", ".join(map(str, foreign[:MAX_LISTED]))
                more = f" and {len(foreign) - MAX_LISTED} more" if len(foreign) > MAX_LISTED else ""
                raise NotAssigned(f"member {member_id!r} does not own partitions [{shown}]{more}")
            if g.role == "consumer":
                self._check_range(g.topic, offsets)
            member.last_seen = self.clock()
            self.wal.commit_offsets(group, g.topic, offsets)
            self.metrics.commits.labels(group, "ok").inc()

    def _check_range(self, topic: str, offsets: dict[int, int]) -> None:
        for p, offset in offsets.items():
            end = self.wal.state(TopicPartition(topic, p)).info().log_end_offset
            if not 0 <= offset <= end:
                raise InvalidArgument(f"offset {offset} of partition {p} is outside 0..{end}")

    def reset(self, group: str, topic: str, offsets: dict[int, int]) -> None:
        """Set committed offsets (admin); live members are fenced and resume from them.

        Committing offsets for a group that has neither live state nor stored offsets
        (deleted or expired since the reset was planned) creates one: at `--max-groups`
        that is refused as a join creating it would be. The registry lock is held until
        the offsets are stored, so no join can take the same last slot meanwhile.
        """
        with self._lock:
            g = self._groups.get(group)
            if g is None:
                self._check_room(group)
                self.wal.commit_offsets(group, topic, offsets)
                return
        with g.lock:
            if g.topic != topic:
                raise InvalidArgument(f"group {group!r} consumes topic {g.topic!r}")
            self.wal.commit_offsets(group, topic, offsets)
            if g.members:
                self._rebalance(g, reason="offset reset", reset=frozenset(offsets))

    # ---- views ---------------------------------------------------------------------------

    def describe(self, group: str) -> GroupView | None:
        """The group's live state, or None when no member ever joined since start."""
        g = self._groups.get(group)
        if g is None:
            return None
        with g.lock:
            members = tuple(
                MemberView(m.member_id, m.client_id, tuple(sorted(m.partitions)), m.host)
                for m in g.members.values()
            )
            return GroupView(
                g.name, g.topic, g.role, g.generation, "stable" if members else "empty", members
            )

    def groups(self) -> list[str]:
        """Names of groups with live state."""
        with self._lock:
            return sorted(self._groups)

    def owner(self, group: str, partition: int) -> str:
        """The member owning `partition` now, or ''."""
        g = self._groups.get(group)
        if g is None:
            return ""
        with g.lock:
            return next((m.member_id for m in g.members.values() if partition in m.partitions), "")

    def member_count(self, group: str) -> int:
        """Live members of a group."""
        g = self._groups.get(group)
        return len(g.members) if g else 0

    def empty_since_ns(self, group: str) -> int | None:
        """Since when (wall-clock ns) the group has had no member; None if it has members or
        no live state."""
        g = self._groups.get(group)
        if g is None:
            return None
        with g.lock:
            return None if g.members else g.empty_since_ns

    # ---- registry ------------------------------------------------------------------------

    def remove_if_empty(self, group: str) -> bool:
        """Forget an empty group's live state; False (and nothing done) if it has members."""
        with self._lock:
            g = self._groups.get(group)
            if g is None:
                return True
            with g.lock:
                if g.members:
                    return False
                del self._groups[group]
                self.grants.forget(group)
                return True

    def forget_topic(self, topic: str) -> list[str]:
        """Remove every group on a deleted topic, members too; return their names."""
        with self._lock:
            doomed = [g for g in self._groups.values() if g.topic == topic]
            for g in doomed:
                del self._groups[g.name]
                self.grants.forget(g.name)
        return [g.name for g in doomed]

    def live_groups_on(self, topic: str) -> list[str]:
        """Groups on `topic` with at least one live member."""
        return [g.name for g in self._all() if g.topic == topic and g.members]

    def _group(self, name: str, topic: str, role: Role, partitions: int) -> Group:
        with self._lock:
            g = self._groups.get(name)
            if g is None:
                self._check_room(name)
                g = self._groups[name] = Group(name, topic, role, partitions)
            return g

    def _check_room(self, name: str) -> None:
        """ResourceExhausted if `name` is a new group and the known ones are at the bound
        (caller holds `_lock`)."""
        if self.max_groups <= 0:
            return
        stored = self.wal.offsets.group_names()
        if name in stored:
            return  # known already: its members come back
        known = len(stored | set(self._groups))
        if known < self.max_groups:
            return
        self.metrics.refused.labels("max_groups").inc()
        log.warning("group refused", extra={"limit": "max_groups", "group": name, "groups": known})
        raise ResourceExhausted(
            f"group limit of {self.max_groups} reached (--max-groups): cannot create group "
            f"{name!r}; delete unused groups (walbroker admin delete-group) or wait for "
            "empty ones to expire (--group-retention-s)",
            retry_after_ms=1000,
        )

    def group_count(self) -> int:
        """Known groups: live, or with committed offsets or progress."""
        stored = self.wal.offsets.group_names()
        with self._lock:
            return len(stored | set(self._groups))

    def _get(self, name: str) -> Group:
        g = self._groups.get(name)
        if g is None:
            raise NotFound(f"unknown group {name!r}")
        return g

    def _all(self) -> list[Group]:
        with self._lock:
            return list(self._groups.values())

"""The group coordinator in-process: generations, fencing, cooperative handover, expiry."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from walbroker.config import LogConfig
from walbroker.errors import (
    InvalidArgument,
    NotAssigned,
    NotFound,
    ResourceExhausted,
    StaleGeneration,
)
from walbroker.group import GroupCoordinator, MemberAssignment
from walbroker.log import Log
from walbroker.metrics import BrokerMetrics
from walbroker.reset import ResetTarget, apply_reset, plan_reset
from walbroker.types import TopicPartition as TP


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Inbox:
    """A member's listener: keeps the latest assignment."""

    def __init__(self) -> None:
        self.latest: MemberAssignment | None = None

    def __call__(self, a: MemberAssignment) -> None:
        self.latest = a


@pytest.fixture
def wal(tmp_path):
    w = Log(LogConfig(tmp_path, default_partitions=6, auto_create_topics=True))
    w.start()
    for p in range(6):
        w.append(TP("t", p), b"x" * 800, 100).result()
    yield w
    w.close()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def coord(wal, clock):
    return GroupCoordinator(wal, BrokerMetrics(), clock=clock, rebalance_timeout_s=5)


def join(coord, inbox, member_id="", **kw):
    return coord.join("g", "t", "consumer", member_id=member_id, listener=inbox, **kw)


def test_join_assigns_everything_and_commits_need_the_current_generation(coord, wal):
    a = Inbox()
    ma = join(coord, a)
    assert a.latest.partitions == frozenset(range(6)) and a.latest.generation == 1
    coord.commit("g", ma, 1, {0: 40})
    assert wal.offsets.committed("g", TP("t", 0)) == 40
    b = Inbox()
    join(coord, b)
    with pytest.raises(StaleGeneration):
        coord.commit("g", ma, 1, {0: 50})
    assert wal.offsets.committed("g", TP("t", 0)) == 40


def test_moving_partitions_wait_for_release(coord):
    a, b = Inbox(), Inbox()
    ma = join(coord, a)
    mb = join(coord, b)
    assert len(a.latest.partitions) == 3 and b.latest.partitions == frozenset()
    revoked = frozenset(range(6)) - a.latest.partitions
    # the old owner may still commit what it is revoking, in the new generation
    coord.commit("g", ma, a.latest.generation, {min(revoked): 10})
    with pytest.raises(NotAssigned):
        coord.commit("g", mb, b.latest.generation, {min(revoked): 10})
    coord.release("g", ma, set(revoked))
    assert b.latest.partitions == revoked
    assert b.latest.restarted == revoked
    assert a.latest.partitions.isdisjoint(b.latest.partitions)


def test_leaving_member_hands_over_at_once(coord):
    a, b = Inbox(), Inbox()
    ma = join(coord, a)
    join(coord, b)
    coord.leave("g", ma)
    assert b.latest.partitions == frozenset(range(6))


def test_unreleased_partitions_move_after_the_rebalance_timeout(coord, clock):
    a, b = Inbox(), Inbox()
    ma = join(coord, a)
    mb = join(coord, b)
    clock.now = 4.0
    coord.heartbeat("g", ma)
    coord.heartbeat("g", mb)
    coord.expire()
    assert b.latest.partitions == frozenset()
    clock.now = 6.0
    coord.heartbeat("g", ma)
    coord.heartbeat("g", mb)
    coord.expire()
    assert len(b.latest.partitions) == 3


def test_silent_member_expires_after_its_session_timeout(coord, clock):
    a, b = Inbox(), Inbox()
    ma = join(coord, a, session_timeout_ms=1000)
    mb = join(coord, b, session_timeout_ms=5000)
    clock.now = 2.0
    coord.heartbeat("g", mb)
    assert coord.expire() == [ma]
    assert b.latest.partitions == frozenset(range(6))
    with pytest.raises(NotFound):
        coord.heartbeat("g", ma)


def test_reset_fences_members_and_restarts_partitions(coord, wal):
    a = Inbox()
    ma = join(coord, a)
    coord.commit("g", ma, 1, {0: 80})
    coord.reset("g", "t", {0: 10})
    assert a.latest.generation == 2 and 0 in a.latest.restarted
    assert wal.offsets.committed("g", TP("t", 0)) == 10
    with pytest.raises(StaleGeneration):
        coord.commit("g", ma, 1, {0: 90})
    assert wal.offsets.committed("g", TP("t", 0)) == 10


def test_a_reset_that_would_create_a_group_past_max_groups_is_refused(wal, clock):
    """A reset planned for a stored group that is deleted before it is applied would store
    offsets for a group that no longer exists: one more group, past the bound."""
    metrics = BrokerMetrics()
    coord = GroupCoordinator(wal, metrics, clock=clock, max_groups=2)
    for group in ("a", "b"):
        wal.commit_offsets(group, "t", {0: 10})
    changes = plan_reset(wal, coord, "a", "t", [0], ResetTarget("earliest"))
    wal.delete_group_offsets("a")  # `walbroker admin delete-group a`, meanwhile
    join(coord, Inbox())  # and a consumer's new group "g" takes the slot
    with pytest.raises(ResourceExhausted, match=r"group limit of 2 reached \(--max-groups\)"):
        apply_reset(coord, "a", "t", changes)
    assert "a" not in wal.offsets.group_names() and coord.group_count() == 2
    refused = "gpu_telemetry_broker_refused_calls_total"
    assert metrics.registry.get_sample_value(refused, {"limit": "max_groups"}) == 1
    # Groups the broker knows keep being reset at the bound.
    apply_reset(coord, "b", "t", plan_reset(wal, coord, "b", "t", [0], ResetTarget("latest")))
    assert wal.offsets.committed("b", TP("t", 0)) == 100


def test_bad_requests(coord):
    with pytest.raises(InvalidArgument):
        coord.join("bad name", "t", "consumer", listener=Inbox())
    ma = join(coord, Inbox())
    with pytest.raises(InvalidArgument):
        coord.join("g", "t", "producer", listener=Inbox())
    with pytest.raises(NotFound):
        coord.commit("nope", "m", 1, {})
    gen = coord.describe("g").generation
    with pytest.raises(InvalidArgument):
        coord.commit("g", ma, gen, {0: 10**9})  # beyond the log end


class CoordinatorMachine(RuleBasedStateMachine):
    """Random joins, leaves, releases and expiries never give one partition to two members."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        self.wal = Log(LogConfig(self.dir, default_partitions=7, auto_create_topics=True))
        self.wal.start()
        self.clock = Clock()
        self.coord = GroupCoordinator(
            self.wal, BrokerMetrics(), clock=self.clock, rebalance_timeout_s=100
        )
        self.inboxes: dict[str, Inbox] = {}

    @rule()
    def join(self):
        inbox = Inbox()
        mid = join(self.coord, inbox, session_timeout_ms=60_000)
        self.inboxes[mid] = inbox

    @rule(data=st.data())
    def leave(self, data):
        if self.inboxes:
            mid = data.draw(st.sampled_from(sorted(self.inboxes)))
            self.coord.leave("g", mid)
            del self.inboxes[mid]

    @rule()
    def everyone_releases_what_was_revoked(self):
        g = self.coord._groups.get("g")
        if g is None:
            return
        for mid, inbox in list(self.inboxes.items()):
            held = {p for p, o in g.owners.items() if o == mid}
            self.coord.release("g", mid, held - set(inbox.latest.partitions))

    @invariant()
    def granted_partitions_are_disjoint_and_owned(self):
        seen: set[int] = set()
        gens = {i.latest.generation for i in self.inboxes.values() if i.latest}
        assert len(gens) <= 1  # everyone was told the current generation
        for inbox in self.inboxes.values():
            parts = inbox.latest.partitions
            assert seen.isdisjoint(parts)
            seen |= parts

    @invariant()
    def complete_once_nothing_is_revoking(self):
        g = self.coord._groups.get("g")
        if g is not None and self.inboxes and not g.revoking:
            granted = set().union(*(i.latest.partitions for i in self.inboxes.values()))
            assert granted == set(range(7))

    def teardown(self):
        self.wal.close()
        shutil.rmtree(self.dir, ignore_errors=True)


TestCoordinatorMachine = CoordinatorMachine.TestCase
TestCoordinatorMachine.settings = settings(max_examples=30, stateful_step_count=25, deadline=None)

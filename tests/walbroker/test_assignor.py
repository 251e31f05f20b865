"""Properties of the sticky, balanced assignor."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from walbroker.assignor import assign

members_st = st.lists(
    st.text("abcdef", min_size=1, max_size=3), min_size=1, max_size=8, unique=True
)


@st.composite
def scenarios(draw):
    partitions = draw(st.integers(1, 64))
    members = draw(members_st)
    previous = {
        m: set(draw(st.lists(st.integers(0, partitions + 3), max_size=partitions))) for m in members
    }
    return partitions, members, previous


@given(scenarios())
def test_complete_and_disjoint(sc):
    partitions, members, previous = sc
    plan = assign(partitions, members, previous)
    owned = [p for ps in plan.values() for p in ps]
    assert sorted(owned) == list(range(partitions))
    assert set(plan) == set(members)


@given(scenarios())
def test_balanced(sc):
    partitions, members, previous = sc
    sizes = [len(ps) for ps in assign(partitions, members, previous).values()]
    assert max(sizes) - min(sizes) <= 1


@given(st.integers(1, 64), members_st, st.data())
def test_sticky_when_members_join_or_leave(partitions, members, data):
    before = assign(partitions, members, {})
    changed = data.draw(members_st)
    after = assign(partitions, changed, before)
    for m in set(members) & set(changed):
        kept = len(before[m] & after[m])
        # a surviving member keeps as much of its share as its new share allows
        assert kept == min(len(before[m]), len(after[m]))


def test_stable_when_nothing_changes():
    first = assign(16, ["a", "b", "c"], {})
    assert assign(16, ["a", "b", "c"], first) == first


def test_no_members_no_plan():
    assert assign(8, [], {}) == {}

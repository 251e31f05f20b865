"""Sticky, balanced partition assignment (a pure function; the coordinator calls it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set


def assign(
    partitions: int, members: Sequence[str], previous: Mapping[str, Set[int]]
) -> dict[str, frozenset[int]]:
    """Spread partitions 0..partitions-1 over `members`.

    Balanced: member shares differ by at most one. Complete: every partition goes to
    exactly one member. Sticky: a member keeps as many of its `previous` partitions as
    its share allows; members holding more get the larger shares first.
    """
    if not members:
        return {}
    valid = frozenset(range(partitions))
    held = {m: sorted(set(previous.get(m, ())) & valid) for m in members}
    order = sorted(members, key=lambda m: (-len(held[m]), m))
    base, extra = divmod(partitions, len(order))
    quota = {m: base + (1 if i < extra else 0) for i, m in enumerate(order)}
    result: dict[str, set[int]] = {}
    taken: set[int] = set()
    for m in order:
        keep = [p for p in held[m] if p not in taken][: quota[m]]
        result[m] = set(keep)
        taken.update(keep)
    free = iter(sorted(valid - taken))
    for m in order:
        while len(result[m]) < quota[m]:
            result[m].add(next(free))
    return {m: frozenset(ps) for m, ps in result.items()}

"""Helpers for broker tests: a trivial item codec and a consumer that drains a topic."""

from __future__ import annotations

import struct
import time
from collections import Counter

from walbroker.consumer import Consumer, Message
from walbroker.credentials import ClientSecurity

_ITEM = struct.Struct(">Q")


def encode(items: list[int]) -> bytes:
    """Items (unsigned ints) as a payload."""
    return b"".join(_ITEM.pack(i) for i in items)


def decode(msg: Message) -> list[int]:
    """The items of a record, honouring `skip`."""
    items = [v for (v,) in _ITEM.iter_unpack(msg.payload)]
    assert len(items) == msg.count, "payload and count disagree"
    return items[msg.skip :]


def item(producer: int, n: int) -> int:
    """A unique item id for producer `producer`'s n-th item."""
    return producer << 32 | n


def drain(
    address: str,
    topic: str,
    expected: int,
    group: str = "verify",
    timeout_s: float = 60.0,
    security: ClientSecurity | None = None,
) -> tuple[Counter[int], dict[int, list[tuple[int, int]]]]:
    """Consume a topic from the earliest offset until `expected` points arrived (or timeout).

    Returns the items seen (with multiplicity) and per partition the (base, count)
    of every record, to check contiguity.
    """
    seen: Counter[int] = Counter()
    records: dict[int, list[tuple[int, int]]] = {}
    c = Consumer(address, group, topic, max_unacked_points=500_000, security=security).start()
    try:
        deadline = time.monotonic() + timeout_s
        while sum(seen.values()) < expected and time.monotonic() < deadline:
            for m in c.poll(0.5):
                seen.update(decode(m))
                records.setdefault(m.partition, []).append((m.base_offset, m.count))
            c.commit()
    finally:
        c.close()
    return seen, records


def assert_contiguous(records: dict[int, list[tuple[int, int]]]) -> None:
    """Each partition's records start at 0 and follow each other without gap or overlap."""
    for p, recs in records.items():
        expected = 0
        for base, count in sorted(recs):
            assert base == expected, f"partition {p}: record at {base}, expected {expected}"
            expected = base + count

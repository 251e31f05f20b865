"""Paging through downsampled windows at a cost independent of how much data the GPU has.

A page asks the store for the first point at or after the resume time (an indexed lookup that
skips gaps), then aggregates at most `limit` windows from that point's window on. The keyset is
(window start, metric); `(t, "")` means "resume at time t". A first window cut by `start` stays
cut on every page, so paging returns exactly what one big request would.
"""

from __future__ import annotations

from dataclasses import dataclass

from store import Store, WindowValue
from store.base import Aggregate


@dataclass(frozen=True, slots=True)
class Window:
    """What to aggregate: one GPU's metrics in [start_ns, end_ns], windows of `every_ns`."""

    uuid: str
    start_ns: int
    end_ns: int
    metrics: list[str] | None
    every_ns: int
    agg: Aggregate


Key = tuple[int, str]


def page(
    store: Store, spec: Window, limit: int, after: Key | None
) -> tuple[list[WindowValue], Key | None]:
    """Return up to `limit` window values after `after` and the key to resume from (or None).

    A key is handed out only when a point lies beyond it, so no cursor leads to an empty page.
    """
    while True:
        rows, resume = _chunk(store, spec, limit, after)
        if rows or resume is None:
            break
        after = resume  # every window of this chunk was before `after`: look further
    # Resuming at a chunk boundary: hand the key out only if a point lies at or after it.
    if resume is not None and resume[1] == "" and not _any_from(store, spec, resume[0]):
        resume = None
    return rows, resume


def _any_from(store: Store, spec: Window, start_ns: int) -> bool:
    """True when the GPU has a point of the spec's metrics in [start_ns, end_ns]."""
    return bool(store.query_points(spec.uuid, start_ns, spec.end_ns, spec.metrics, 1))


def _chunk(
    store: Store, spec: Window, limit: int, after: Key | None
) -> tuple[list[WindowValue], Key | None]:
    """Aggregate the chunk of at most `limit` windows from the first point after `after`."""
    lo = spec.start_ns if after is None else max(spec.start_ns, after[0])
    if lo > spec.end_ns:
        return [], None
    first = store.query_points(spec.uuid, lo, spec.end_ns, spec.metrics, 1)
    if not first:
        return [], None
    every = spec.every_ns
    chunk_start = max(lo, first[0].time_ns // every * every)
    chunk_end = min(spec.end_ns, chunk_start // every * every + every * limit - 1)
    rows = store.downsample(spec.uuid, chunk_start, chunk_end, spec.metrics, every, spec.agg)
    if after is not None:
        rows = [w for w in rows if (w.time_ns, w.metric) > after]
    if len(rows) > limit:
        last = rows[limit - 1]
        return rows[:limit], (last.time_ns, last.metric)
    return rows, ((chunk_end + 1, "") if chunk_end < spec.end_ns else None)

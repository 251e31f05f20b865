"""One GPU's raw points and latest values on InfluxDB, read with InfluxQL (`store.influxql`).

A GPU is one series whose rows are times, two fields per metric (`store.schema`). A raw page
is one InfluxQL statement over it, `time >= lo AND time <= end LIMIT rows`: InfluxQL streams
the series' blocks in time order and stops at the limit, so a page costs O(page) at any
history depth. The gateway's pages are points ordered by (time, metric) with a keyset cursor,
so the rows are unpivoted here, metrics in name order, and

- the row at the cursor's own time is read whole and its metrics after the cursor's kept;
- the page's statement asks for the rows the page should need (`PageHint`: points a row held
  on the last page) and one more; when it came back full, its last time is dropped (a GPU
  whose descriptor changed has two series, whose rows of one time may be cut by the limit)
  and the page reads on from that time when the times before it did not fill the page.

The first read rides in the same request as the cursor's row and the GPU's catalog entry, so
a page is one request to InfluxDB when the hint is right.

InfluxDB makes a batch's fields visible field by field, so a read racing a write can see a
point's `source_time` without its `value` (or the reverse). Such a point is still being
written: a page ends before it (no cursor may pass it), `latest` skips it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from store import influxql, schema
from store.base import RawPoint, StoredPoint
from store.v1query import QueryClient, Series

_ORDER = itemgetter(0, 1)  # (time, metric): the page order
# GPUs per `latest` statement. InfluxDB 1.8 reduces a statement's WHERE for each series it
# reads, so an OR of n uuids costs O(n) per series: 1,000 GPUs took 480-600 ms as one
# statement of 1,000 uuids, 160-180 ms as ten of 100, 230-250 ms as 1,000 of one.
LATEST_CHUNK = 100
_SUFFIX = schema.SOURCE_SUFFIX
Half = tuple[int, str, Any, Any]  # a point as read: value or source time may be None


class PageHint:
    """Points per row on the last page read: how many rows the next page asks for.

    A hint only: too few rows cost a second request, too many a longer read, never a wrong
    page. Shared by a store's threads without a lock (a lost update costs the same).
    """

    def __init__(self) -> None:
        self.per_row = 1.0

    def rows(self, points: int, metrics: Sequence[str] | None) -> int:
        """Rows to ask for `points` more points (one more: the last time may be dropped)."""
        per_row = min(self.per_row, len(metrics)) if metrics else self.per_row
        return math.ceil(points / max(per_row, 1.0)) + 1

    def saw(self, points: int, rows: int) -> None:
        """Remember a full read's points per row."""
        if rows:
            self.per_row = max(points / rows, 1.0)


def _pairs(columns: list[str]) -> list[tuple[str, int, int | None]]:
    """(metric, value column, source-time column) of a result's columns, by metric name."""
    at = {c: i for i, c in enumerate(columns)}
    return sorted(
        (c, i, at.get(c + _SUFFIX))
        for i, c in enumerate(columns)
        if i and not c.endswith(_SUFFIX)  # column 0 is the time
    )


def _unpivot(found: list[Series]) -> list[Half]:
    """The points of a statement's rows, in (time, metric) order (see the module docstring).

    Rows come in time order; a GPU with two series (its descriptor changed) has two rows of
    one time, whose points are then sorted into metric order.
    """
    out: list[Half] = []
    prev, tied = None, len(found) > 1
    for series in found:
        pairs = _pairs(series.columns)
        for row in series.values:
            t = row[0]
            tied = tied or t == prev
            prev = t
            for metric, v, s in pairs:
                value, source = row[v], (None if s is None else row[s])
                if value is not None or source is not None:
                    out.append((t, metric, value, source))
    if tied:
        out.sort(key=_ORDER)
    return out


def _rows_read(found: list[Series]) -> int:
    return sum(len(s.values) for s in found)


def _last_time(found: list[Series]) -> int:
    return int(max(s.values[-1][0] for s in found if s.values))


def page(
    client: QueryClient,
    uuid: str,
    start_ns: int,
    end_ns: int,
    metrics: Sequence[str] | None,
    limit: int,
    after: tuple[int, str] | None,
    hint: PageHint,
    lead: Sequence[str] = (),
) -> tuple[list[list[Series]], list[RawPoint]]:
    """Up to `limit` points in [start_ns, end_ns] after `after`, ordered by (time, metric).

    The `lead` statements ride in the same request, before the page's: their results come
    first (the telemetry page reads its GPU's catalog entry so, `InfluxStore.query_gpu_raw`).
    """
    if after is not None and after[0] > end_ns:  # the cursor is past the range
        return (client.results(list(lead)) if lead else []), []
    at_cursor = after is not None and after[0] >= start_ns
    statements, lo = list(lead), start_ns
    if after is not None and at_cursor:
        statements.append(influxql.points(uuid, after[0], after[0], metrics, None))
        lo = after[0] + 1
    asked = hint.rows(limit, metrics)
    if lo <= end_ns:
        statements.append(influxql.points(uuid, lo, end_ns, metrics, asked))
    results = client.results(statements) if statements else []
    led, found = results[: len(lead)], results[len(lead) :]
    points: list[Half] = []
    if after is not None and at_cursor:
        points = [p for p in _unpivot(found.pop(0)) if p[1] > after[1]]
    while found:
        main = found.pop()
        rows, read = _rows_read(main), _unpivot(main)
        if rows:
            hint.saw(len(read), rows)
        if rows < asked:  # short: every time in it is whole
            points += read
            break
        last = _last_time(main)  # full: its last time may be cut, so it is read again
        cut = len(read)
        while cut and read[cut - 1][0] == last:
            cut -= 1
        points += read[:cut]
        if len(points) >= limit:
            break
        if not cut:  # one time filled the read (several series): read it whole, then on
            points += _unpivot(client.series(influxql.points(uuid, last, last, metrics, None)))
            if len(points) >= limit or last >= end_ns:
                break
            last += 1
        asked = hint.rows(limit - len(points), metrics)
        found = [client.series(influxql.points(uuid, last, end_ns, metrics, asked))]
    del points[limit:]
    for i, (_, _, value, source) in enumerate(points):
        if value is None or source is None:
            del points[i:]  # half-written point: the page ends before it
            break
    # float(): InfluxDB's JSON (a server answering no MessagePack) writes 3.0 as 3
    return led, [(t, metric, float(value), int(source)) for t, metric, value, source in points]


def latest(
    client: QueryClient, uuids: Sequence[str], metrics: Sequence[str] | None, stop_ns: int
) -> dict[str, dict[str, StoredPoint]]:
    """The newest complete point of each metric (all when None) of each GPU at or before
    `stop_ns`.

    First each GPU's newest row (`influxql.newest_rows`, LATEST_CHUNK GPUs a statement, one
    request): a scrape writes a GPU's metrics at one time, so that row usually holds them
    all. A metric it lacks (of those asked, or of the measurement's fields: the row's
    columns) is then read by itself, `last()` per metric (a second request, only then). A
    half-written point is skipped: `last()` picks the newest row holding the metric's value,
    and one whose source time is not visible yet is left out, as a page ends before it.
    """
    chunks = [uuids[i : i + LATEST_CHUNK] for i in range(0, len(uuids), LATEST_CHUNK)]
    found = client.results([influxql.newest_rows(c, metrics, stop_ns) for c in chunks])
    newest: dict[str, dict[str, StoredPoint]] = {}
    known = set(metrics or ())
    by_columns: dict[tuple[str, ...], list[tuple[str, int, int | None]]] = {}
    for series in (s for result in found for s in result):
        uuid = series.tags.get(schema.TAG_UUID)
        columns = tuple(series.columns)  # a statement's series share their columns
        pairs = by_columns.get(columns)
        if pairs is None:
            pairs = by_columns[columns] = _pairs(series.columns)
            known.update(m for m, _, _ in pairs)
        if not uuid or not series.values:
            continue
        row, got = series.values[0], newest.setdefault(uuid, {})
        for metric, v, s in pairs:
            value, source = row[v], (None if s is None else row[s])
            if value is not None and source is not None:
                got[metric] = StoredPoint(metric, int(row[0]), float(value), int(source))
    lacking = [(m, [u for u, got in newest.items() if m not in got]) for m in sorted(known)]
    asked = [
        (m, influxql.latest(few[i : i + LATEST_CHUNK], m, stop_ns))
        for m, few in lacking
        for i in range(0, len(few), LATEST_CHUNK)
    ]
    if asked:
        for (metric, _), rest in zip(asked, client.results([s for _, s in asked]), strict=True):
            for series in rest:
                uuid = series.tags.get(schema.TAG_UUID)
                for t, value, source in series.values:
                    if uuid and value is not None and source is not None:
                        newest[uuid][metric] = StoredPoint(
                            metric, int(t), float(value), int(source)
                        )
    return {u: got for u, got in newest.items() if got}

"""One GPU's raw points and latest values on InfluxDB, read with InfluxQL (`store.influxql`).

A raw page is one InfluxQL statement over the GPU's series, `time >= lo AND time <= end
LIMIT n`: InfluxQL streams the series' blocks in time order and stops at the limit, so a
page costs O(page) at any history depth (no growing time windows needed, as with Flux).
InfluxQL promises time order but no order among the points of one time, while pages are
ordered by (time, metric) with a keyset cursor; so

- the points at the cursor's own time are read whole and those after its metric kept;
- the page's statement asks for SLACK rows more than the page; when it came back full its
  last time may be cut anywhere, so that time is dropped when the times before it fill
  the page, and read whole again otherwise (only when one time holds more points than
  the slack) before sorting and cutting to the limit.

The extra reads touch one timestamp of one GPU; the first rides in the same request as
the page itself, so a page is one request to InfluxDB (it was two while every full page
re-read its last time).

InfluxDB 1.8 makes a batch's fields visible series by series, so a read racing a write can
see a point's `source_time` without its `value` (or the reverse). Such a point is still
being written: a page ends before it (no cursor may pass it), `latest` skips it.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from store import influxql, schema
from store.base import RawPoint, StoredPoint
from store.v1query import QueryClient, Series

Row = list[Any]  # [time_ns, value or None, source_time or None, metric]: as InfluxQL answers


# Rows read beyond a page, so that its last time is usually complete without a second read
# (a GPU has one point per metric at a time: a few dozen metrics fit in the slack).
SLACK = 64
_ORDER = itemgetter(0, 3)  # (time, metric): the page order
# GPUs per `latest` statement. InfluxDB 1.8 reduces a statement's WHERE for each series it
# reads, so an OR of n uuids costs O(n) per series: 1,000 GPUs took 480-600 ms as one
# statement of 1,000 uuids, 160-180 ms as ten of 100, 230-250 ms as 1,000 of one.
LATEST_CHUNK = 100


def _rows(found: list[Series]) -> list[Row]:
    """The rows of `influxql.points` (columns: time, value, source_time, metric), in time order.

    One statement without GROUP BY answers one series, whose rows come in time order; the
    rows are InfluxQL's own lists, not copied (a page's post-processing is gateway CPU).
    """
    if len(found) == 1:
        return found[0].values
    return sorted((r for series in found for r in series.values), key=itemgetter(0))


def _complete(
    client: QueryClient,
    main: list[Row],
    uuid: str,
    metrics: Sequence[str] | None,
    limit: int,
    asked: int,
) -> list[Row]:
    """The rows of `main` whose times are complete, enough for `limit` rows after sorting.

    `main` is the first `asked` rows in time order. When it came back short, every time in
    it is complete. Otherwise its last time may be cut: that time is dropped when the times
    before it hold `limit` rows, else read whole (a second request: only when a single time
    holds more points than the slack).
    """
    if len(main) < asked:
        return main
    last, cut = main[-1][0], len(main) - 1
    while cut and main[cut - 1][0] == last:
        cut -= 1
    if cut >= limit:
        return main[:cut]
    return main[:cut] + _rows(client.series(influxql.points(uuid, last, last, metrics, None)))


def page(
    client: QueryClient,
    uuid: str,
    start_ns: int,
    end_ns: int,
    metrics: Sequence[str] | None,
    limit: int,
    after: tuple[int, str] | None,
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
    if lo <= end_ns:
        statements.append(influxql.points(uuid, lo, end_ns, metrics, limit + SLACK))
    results = client.results(statements) if statements else []
    led, found = results[: len(lead)], [_rows(r) for r in results[len(lead) :]]
    rows: list[Row] = []
    if after is not None and at_cursor:
        rows = [r for r in found.pop(0) if r[3] > after[1]]
    if found:
        rows += _complete(client, found[0], uuid, metrics, limit, limit + SLACK)
    rows.sort(key=_ORDER)
    del rows[limit:]
    for i, (_, value, source, _) in enumerate(rows):
        if value is None or source is None:
            del rows[i:]  # half-written point: the page ends before it
            break
    # float(): InfluxDB's JSON (a server answering no MessagePack) writes 3.0 as 3
    return led, [(t, metric, float(value), int(source)) for t, value, source, metric in rows]


def latest(
    client: QueryClient, uuids: Sequence[str], metrics: Sequence[str] | None, stop_ns: int
) -> dict[str, dict[str, StoredPoint]]:
    """The newest complete point of each metric of each GPU at or before `stop_ns`.

    One request: a statement per LATEST_CHUNK uuids (`influxql.latest`). A half-written
    point is skipped: `last()` picks the newest point holding a `value`, and one whose
    `source_time` is not visible yet is left out, as a page ends before it.
    """
    statements = [
        influxql.latest(uuids[i : i + LATEST_CHUNK], metrics, stop_ns)
        for i in range(0, len(uuids), LATEST_CHUNK)
    ]
    newest: dict[str, dict[str, StoredPoint]] = {}
    for series in (s for found in client.results(statements) for s in found):
        uuid, metric = series.tags.get(schema.TAG_UUID), series.tags.get(schema.TAG_METRIC)
        for t, value, source in series.values:
            if not uuid or not metric or value is None or source is None:
                continue
            newest.setdefault(uuid, {})[metric] = StoredPoint(
                metric, int(t), float(value), int(source)
            )
    return newest

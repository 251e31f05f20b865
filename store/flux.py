"""Flux query text for the InfluxDB store, in the subset InfluxDB 1.8 (Flux 0.65) also runs.

Every caller value enters a query only through `string()`, `time()` or `duration()`, never by
plain formatting: strings are escaped (backslash, quote) and `${` is split so Flux's string
interpolation can never run. Callers validate values first (`store.validate`).
Used functions: range, filter, keep, group, distinct, sort, first, last, count,
aggregateWindow. Note `range(stop:)` is exclusive, so an inclusive end becomes `end_ns + 1`.
The reads the gateway makes on every request are InfluxQL instead (`store.influxql`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from store import schema

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ALL_TIME_STOP_NS = 2**63 - 1  # exclusive; InfluxDB's largest timestamp is 2**63 - 2


def string(value: str) -> str:
    """Return `value` as a Flux string literal that cannot break out or interpolate."""
    body = value.replace("\\", "\\\\").replace('"', '\\"')
    # Flux 0.65 has no `\$` escape; split `${` across a concatenation instead.
    body = body.replace("${", '$" + "{')
    return f'"{body}"'


def time(ns: int) -> str:
    """Return an RFC 3339 date-time literal with nanoseconds for `ns` since the epoch."""
    seconds, frac = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{frac:09d}Z"


def duration(ns: int) -> str:
    """Return a Flux duration literal of `ns` nanoseconds."""
    return f"{int(ns)}ns"


def _eq(column: str, value: str) -> str:
    return f"r.{column} == {string(value)}"


def _any_of(column: str, values: Sequence[str]) -> str:
    return "(" + " or ".join(_eq(column, v) for v in values) + ")"


def source(bucket: str, start_ns: int, stop_ns: int) -> str:
    """Return `from |> range` over [start_ns, stop_ns) of `bucket`."""
    window = f"range(start: {time(start_ns)}, stop: {time(stop_ns)})"
    return f"from(bucket: {string(bucket)})\n  |> {window}"


# A value field, not a source-time one (`store.schema`: a field per metric and one per
# metric's source time; metric names hold no `@`).
VALUE_FIELDS = f"r._field !~ /{schema.SOURCE_SUFFIX}$/"
METRIC = "_field"  # the column naming a row's metric: its value field's key


def predicate(
    tags: dict[str, str] | None = None,
    metrics: Sequence[str] | None = None,
    extra: Sequence[str] = (),
) -> str:
    """Return a `filter` stage: the measurement, the value fields of `metrics` (all when
    None), exact tag values, extra clauses."""
    clauses = [_eq("_measurement", schema.MEASUREMENT)]
    clauses.append(_any_of(METRIC, metrics) if metrics else VALUE_FIELDS)
    clauses += [_eq(k, v) for k, v in sorted((tags or {}).items())]
    clauses += extra
    return "\n  |> filter(fn: (r) => " + " and ".join(clauses) + ")"


def until(end_ns: int) -> str:
    """Return a filter clause keeping rows at or before `end_ns`.

    InfluxDB 1.8's storage read treats `range(stop:)` as inclusive while 2.x excludes it, so
    queries use `stop: end + 1` and this clause: the end is inclusive on both, exactly once.
    """
    return f"r._time <= {time(end_ns)}"


def series_edge(
    bucket: str,
    edge: str,
    tags: dict[str, str],
    extra: Sequence[str] = (),
    stop_ns: int = ALL_TIME_STOP_NS,
) -> str:
    """Return the first or last value of every metric of every GPU matching `tags` before
    `stop_ns`."""
    if edge not in ("first", "last"):
        raise ValueError(edge)
    return source(bucket, 0, stop_ns) + predicate(tags=tags, extra=extra) + f"\n  |> {edge}()"


def distinct(bucket: str, column: str) -> str:
    """Return the distinct values of one column (a tag, or METRIC) over all time."""
    return (
        source(bucket, 0, ALL_TIME_STOP_NS)
        + predicate()
        + f"\n  |> group()\n  |> distinct(column: {string(column)})"
    )


def counts(bucket: str, tags: dict[str, str], metric: str | None = None) -> str:
    """Return the number of points per (uuid, METRIC), of one metric or all."""
    return (
        source(bucket, 0, ALL_TIME_STOP_NS)
        + predicate(tags=tags, metrics=[metric] if metric is not None else None)
        + f'\n  |> group(columns: ["{schema.TAG_UUID}", "{METRIC}"])\n  |> count()'
    )


def downsample(
    bucket: str,
    start_ns: int,
    end_ns: int,
    uuid: str,
    metrics: Sequence[str] | None,
    every_ns: int,
    agg: str,
) -> str:
    """Return values aggregated per metric into windows of `every_ns` (times are window stops)."""
    if agg not in ("mean", "min", "max", "last"):
        raise ValueError(agg)
    return (
        source(bucket, start_ns, end_ns + 1)
        + predicate(tags={schema.TAG_UUID: uuid}, metrics=metrics, extra=[until(end_ns)])
        + f'\n  |> keep(columns: ["_start", "_stop", "_time", "_value", "{METRIC}"])'
        + f'\n  |> group(columns: ["{METRIC}"])'
        + '\n  |> sort(columns: ["_time"])'
        + f"\n  |> aggregateWindow(every: {duration(every_ns)}, fn: {agg}, createEmpty: false)"
    )


def parse_time(text: str) -> int:
    """Return ns since the epoch for an RFC 3339 timestamp as Flux prints it (UTC, `Z`)."""
    head, _, frac = text.rstrip("Z").partition(".")
    seconds = (datetime.fromisoformat(head).replace(tzinfo=UTC) - _EPOCH) // timedelta(seconds=1)
    return seconds * 1_000_000_000 + int((frac + "000000000")[:9])

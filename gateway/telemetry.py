"""GET /api/v1/gpus/{id}/telemetry: one GPU's points in an inclusive time window, paginated.

Raw points come straight from the store's (time, metric)-ordered index with a keyset cursor,
so a page costs the same at any depth and data written meanwhile is neither skipped nor
repeated. With `every`, windows are aggregated by the store (see `gateway.windows`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from flask import Blueprint, Response, jsonify, request

from gateway import cursor, known_metrics, lookup, schemas, windows
from gateway.errors import BadRequest
from gateway.extension import current_store
from gateway.openapi import Operation, operation
from gateway.params import CURSOR, DEFAULT_LIMIT, LIMIT, METRIC_PATTERN, Param, metric_name
from gateway.times import TIME_HELP, format_time, format_times, parse_duration, parse_time
from store import GpuSummary, Store
from store.base import RawPoint
from store.validate import MAX_NS

bp = Blueprint("telemetry", __name__, url_prefix="/api/v1")
Agg = Literal["mean", "min", "max", "last"]
AGGS: tuple[Agg, ...] = ("mean", "min", "max", "last")
TIME_SCHEMA = {"type": "string", "pattern": r"^[0-9]"}


def _agg(value: str) -> Agg:
    for agg in AGGS:
        if value == agg:
            return agg
    raise ValueError(f"{value[:32]!r} is not one of {', '.join(AGGS)}")


START = Param(
    "start_time",
    f"Inclusive lower bound: {TIME_HELP}.",
    TIME_SCHEMA,
    parse_time,
    example="2024-05-01T12:00:00Z",
)
END = Param(
    "end_time",
    f"Inclusive upper bound: {TIME_HELP}.",
    TIME_SCHEMA,
    parse_time,
    example="2024-05-01T13:00:00.5+01:00",
)
METRIC = Param(
    "metric",
    "Only these metrics (repeat the parameter for several). A name the store has no data "
    "for is a 400 whose `known_metrics` lists the names it has (see GET /api/v1/metrics).",
    {"type": "string", "pattern": METRIC_PATTERN},
    metric_name,
    repeated=True,
)
EVERY = Param(
    "every",
    "Downsample into epoch-aligned windows of this length (e.g. 1m, 30s).",
    {"type": "string", "pattern": r"^[1-9][0-9]{0,9}(ns|us|ms|s|m|h|d)$"},
    parse_duration,
)
AGG = Param(
    "agg",
    "Aggregate of each window (needs `every`; default mean).",
    {"type": "string", "enum": list(AGGS)},
    _agg,
)


@dataclass(frozen=True, slots=True)
class TelemetryQuery:
    """The parsed, mutually consistent parameters of one telemetry request."""

    start_ns: int | None
    end_ns: int | None
    metrics: list[str] | None
    limit: int
    cursor: str | None
    every: str | None
    agg: Agg

    @property
    def lo(self) -> int:
        """Return the inclusive lower bound (the epoch when not given)."""
        return 0 if self.start_ns is None else self.start_ns

    @property
    def hi(self) -> int:
        """Return the inclusive upper bound (the latest storable time when not given)."""
        return MAX_NS if self.end_ns is None else self.end_ns

    def fingerprint(self, uuid: str) -> str:
        """Return the fingerprint every page of this query shares."""
        return cursor.fingerprint(
            "telemetry", uuid, self.lo, self.hi, self.metrics, self.every, self.agg
        )


def parse_query() -> TelemetryQuery:
    """Return the request's telemetry parameters, raising 400 for any inconsistency."""
    args = request.args
    start, end = START.one(args), END.one(args)
    if start is not None and end is not None and start > end:
        raise BadRequest(
            f"start_time ({format_time(start)}) is after end_time ({format_time(end)})",
            parameter="start_time",
        )
    every, agg = args.get("every"), AGG.one(args)
    if EVERY.one(args) is None and agg is not None:
        raise BadRequest("agg: needs every (e.g. every=1m&agg=max)", parameter="agg")
    metrics = METRIC.many(args)
    return TelemetryQuery(
        start_ns=start,
        end_ns=end,
        metrics=sorted(set(metrics)) if metrics else None,
        limit=LIMIT.one(args) or DEFAULT_LIMIT,
        cursor=CURSOR.one(args),
        every=every,
        agg=agg or "mean",
    )


def _after(q: TelemetryQuery, fp: str) -> tuple[int, str] | None:
    """Return the keyset of the request's cursor for the query of fingerprint `fp` (400 when
    it is not one of its cursors)."""
    return cursor.time_key(q.cursor, fp) if q.cursor else None


def raw_page(
    store: Store, gpu_id: str, q: TelemetryQuery
) -> tuple[GpuSummary, list[schemas.Point], str | None]:
    """Return the GPU `gpu_id` names, one page of its raw points and the next cursor.

    A uuid's GPU and page are one store read (`Store.query_gpu_raw`: one request to
    InfluxDB). An index, an unknown id, or a cursor made for the uuid an index names is
    resolved first (`lookup.resolve`: its 404 and 409 come before a 400 for the metrics).
    """
    gpu: GpuSummary | None = None
    found: list[RawPoint] | None = None
    fp = q.fingerprint(gpu_id)
    try:
        after = _after(q, fp)
    except BadRequest:
        pass  # resolve first: the cursor may be the uuid's, or the id unknown (404 first)
    else:
        gpu, found = store.query_gpu_raw(gpu_id, q.lo, q.hi, q.metrics, q.limit + 1, after)
    if gpu is None:
        gpu, found = lookup.resolve(store, gpu_id), None
    known_metrics.check(store, q.metrics)
    if found is None:
        fp = fp if gpu.uuid == gpu_id else q.fingerprint(gpu.uuid)
        after = _after(q, fp)
        found = store.query_raw(gpu.uuid, q.lo, q.hi, q.metrics, q.limit + 1, after)
    page = found[: q.limit]
    # Plain tuples and one formatted stamp per distinct time: this loop is most of a page's CPU.
    stamps = format_times([row[0] for row in page])
    sources = format_times([row[3] for row in page if row[3]])
    points: list[schemas.Point] = [
        {"time": stamps[t], "metric": metric, "value": value, "source_time": sources.get(s)}
        for t, metric, value, s in page
    ]
    more = len(found) > q.limit
    return gpu, points, cursor.encode([page[-1][0], page[-1][1]], fp) if more else None


def window_page(
    store: Store, gpu: GpuSummary, q: TelemetryQuery
) -> tuple[list[schemas.Point], str | None]:
    """Return one page of downsampled windows and the next cursor."""
    assert q.every is not None
    fp = q.fingerprint(gpu.uuid)
    after = cursor.time_key(q.cursor, fp) if q.cursor else None
    spec = windows.Window(gpu.uuid, q.lo, q.hi, q.metrics, parse_duration(q.every), q.agg)
    found, resume = windows.page(store, spec, q.limit, after)
    points: list[schemas.Point] = [
        {"time": format_time(w.time_ns), "metric": w.metric, "value": w.value, "source_time": None}
        for w in found
    ]
    return points, cursor.encode(list(resume), fp) if resume else None


@bp.get("/gpus/<path:gpu_id>/telemetry")  # path: see gateway.gpus.get_gpu
@operation(
    Operation(
        summary="A GPU's points, oldest first",
        tag="telemetry",
        response=schemas.TelemetryPage,
        description="Points with start_time <= time <= end_time (both inclusive), ordered by "
        "(time, metric). Follow `next_cursor` for the next page; pages neither skip nor repeat "
        "points while new data arrives. With `every` (and `agg`), points are window aggregates. "
        "`next_cursor` is null when no point follows, so no cursor leads to an empty page. "
        "A '+' in a time's UTC offset must be URL-encoded as %2B.",
        path={"gpu_id": lookup.ID_HELP},
        query=(START, END, METRIC, LIMIT, CURSOR, EVERY, AGG),
        errors=(400, 404, 409, 502, 503),
    )
)
def telemetry(gpu_id: str) -> Response:
    """Return one page of a GPU's telemetry."""
    q = parse_query()
    store = current_store()
    if q.every:
        gpu = lookup.resolve(store, gpu_id)
        known_metrics.check(store, q.metrics)
        points, next_cursor = window_page(store, gpu, q)
    else:
        gpu, points, next_cursor = raw_page(store, gpu_id, q)
    body: schemas.TelemetryPage = {
        "gpu": lookup.describe(gpu),
        "start_time": None if q.start_ns is None else format_time(q.start_ns),
        "end_time": None if q.end_ns is None else format_time(q.end_ns),
        "metrics": q.metrics,
        "downsampling": {"every": q.every, "agg": q.agg} if q.every else None,
        "points": points,
        "next_cursor": next_cursor,
    }
    return jsonify(body)

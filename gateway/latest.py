"""GET /api/v1/latest: the newest values of a few metrics for a page of GPUs, in one request.

A page of the GPU catalog (the order, filters and cursors of GET /api/v1/gpus) and one store
read of the page's latest values (`Store.latest_of`): two store calls a page whatever the
fleet size, where a client asking GET /api/v1/gpus/{id} per GPU made one per GPU (the web
view's fleet page took 48-53 s to draw 5,000 GPUs on SQLite; docs/benchmarks.md).
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from gateway import cursor, known_metrics, lookup, schemas
from gateway.errors import BadRequest
from gateway.extension import current_store
from gateway.gpus import HOSTNAME, MODEL, STORE_ERRORS
from gateway.openapi import Operation, operation
from gateway.params import (
    CURSOR,
    DEFAULT_LIMIT,
    LIMIT,
    MAX_LIMIT,
    METRIC_PATTERN,
    Param,
    metric_name,
)

bp = Blueprint("latest", __name__, url_prefix="/api/v1")
METRIC = Param(
    "metric",
    "The metrics to read (required; repeat it for several). A name the store has no data "
    "for is a 400 whose `known_metrics` lists the names it has.",
    {"type": "string", "pattern": METRIC_PATTERN},
    metric_name,
    repeated=True,
    required=True,
    example="DCGM_FI_DEV_GPU_UTIL",
)
PAGE_LIMIT = Param(
    "limit",
    f"GPUs per page, 1 to {MAX_LIMIT} divided by the number of metrics (a page holds at "
    f"most {MAX_LIMIT:,} values); default {DEFAULT_LIMIT}, or that maximum when lower.",
    {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    LIMIT.parse,
)


def page_limit(asked: int | None, metrics: int) -> int:
    """Return the page size: `asked` or the default, refused past MAX_LIMIT values a page."""
    most = MAX_LIMIT // metrics
    if not most:
        raise BadRequest(f"metric: at most {MAX_LIMIT} names", parameter="metric")
    if asked is None:
        return min(DEFAULT_LIMIT, most)
    if asked > most:
        raise BadRequest(
            f"limit: at most {most} GPUs with {metrics} metrics ({MAX_LIMIT} values a page)",
            parameter="limit",
        )
    return asked


@bp.get("/latest")
@operation(
    Operation(
        summary="The newest value of a few metrics for a page of GPUs",
        tag="gpus",
        response=schemas.LatestPage,
        description="A page of GPUs as GET /api/v1/gpus lists them (catalog order, the same "
        "filters), each with the newest value of each asked metric it has, as GET "
        "/api/v1/gpus/{gpu_id} shows them: one request per page of the fleet instead of one "
        "per GPU. Follow `next_cursor` for the next page.",
        query=(METRIC, HOSTNAME, MODEL, PAGE_LIMIT, CURSOR),
        errors=(400, *STORE_ERRORS),
    )
)
def latest_page() -> Response:
    """Return one page of GPUs with their latest values of the asked metrics."""
    args = request.args
    metrics = sorted(set(METRIC.many(args) or ()))
    limit = page_limit(PAGE_LIMIT.one(args), len(metrics))
    hostname, model = HOSTNAME.one(args), MODEL.one(args)
    query = cursor.fingerprint("latest", "catalog-order", hostname, model, metrics)
    token = CURSOR.one(args)
    after = cursor.uuid_key(token, query) if token else None
    store = current_store()
    known_metrics.check(store, metrics)
    found = store.list_gpus(hostname, model, limit + 1, after)
    page = found[:limit]
    values = store.latest_of([g.uuid for g in page], metrics)
    body: schemas.LatestPage = {
        "metrics": metrics,
        "gpus": [
            {"gpu": lookup.describe(g), "latest": lookup.latest_values(values.get(g.uuid, {}))}
            for g in page
        ],
        "next_cursor": cursor.encode([page[-1].uuid], query) if len(found) > limit else None,
    }
    return jsonify(body)

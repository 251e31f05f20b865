"""GET /api/v1/hosts, /api/v1/metrics and /api/v1/models: pages of the names the GPU
catalog holds.

All three read the store's catalog (`Store.page_names`), never the telemetry, so a page costs
the same with 100 GPUs or 100,000.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from gateway import cursor, schemas
from gateway.extension import current_store
from gateway.openapi import Operation, operation
from gateway.params import CURSOR, DEFAULT_LIMIT, LIMIT

bp = Blueprint("catalog", __name__, url_prefix="/api/v1")


def _page(kind: str) -> tuple[list[str], str | None]:
    """Return one page of names of `kind` and the cursor of the next (None on the last)."""
    limit = LIMIT.one(request.args) or DEFAULT_LIMIT
    query = cursor.fingerprint("names", kind)
    token = CURSOR.one(request.args)
    after = cursor.name_key(token, query) if token else None
    found = current_store().page_names(kind, limit + 1, after)
    more = len(found) > limit
    return found[:limit], cursor.encode([found[limit - 1]], query) if more else None


@bp.get("/hosts")
@operation(
    Operation(
        summary="Hostnames with data",
        tag="catalog",
        response=schemas.HostList,
        description="Hostnames in catalog order (a stable hash of the name, then the name), "
        "so a page reads only the catalog shards it covers; follow `next_cursor`.",
        query=(LIMIT, CURSOR),
        errors=(400, 502, 503),
    )
)
def hosts() -> Response:
    """Return a page of hostnames with data."""
    names, next_cursor = _page("host")
    body: schemas.HostList = {"hosts": names, "next_cursor": next_cursor}
    return jsonify(body)


@bp.get("/metrics")
@operation(
    Operation(
        summary="Metric names with data",
        tag="catalog",
        response=schemas.MetricList,
        description="Metric names, sorted; follow `next_cursor`.",
        query=(LIMIT, CURSOR),
        errors=(400, 502, 503),
    )
)
def metrics() -> Response:
    """Return a page of metric names with data."""
    names, next_cursor = _page("metric")
    body: schemas.MetricList = {"metrics": names, "next_cursor": next_cursor}
    return jsonify(body)


@bp.get("/models")
@operation(
    Operation(
        summary="GPU model names with data",
        tag="catalog",
        response=schemas.ModelList,
        description="GPU model names (as GET /api/v1/gpus shows them in `model`), sorted; "
        "follow `next_cursor`. A page reads the catalog's model names only, never the GPUs, "
        "so it costs the same whatever the fleet size.",
        query=(LIMIT, CURSOR),
        errors=(400, 502, 503),
    )
)
def models() -> Response:
    """Return a page of GPU model names with data."""
    names, next_cursor = _page("model")
    body: schemas.ModelList = {"models": names, "next_cursor": next_cursor}
    return jsonify(body)

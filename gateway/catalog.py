"""GET /api/v1/hosts and GET /api/v1/metrics: what the store holds data for."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from gateway import schemas
from gateway.extension import current_store
from gateway.openapi import Operation, operation

bp = Blueprint("catalog", __name__, url_prefix="/api/v1")


@bp.get("/hosts")
@operation(
    Operation(
        summary="Hostnames with data",
        tag="catalog",
        response=schemas.HostList,
        errors=(400, 502, 503),
    )
)
def hosts() -> Response:
    """Return every hostname with data."""
    body: schemas.HostList = {"hosts": current_store().list_hosts()}
    return jsonify(body)


@bp.get("/metrics")
@operation(
    Operation(
        summary="Metric names with data",
        tag="catalog",
        response=schemas.MetricList,
        errors=(400, 502, 503),
    )
)
def metrics() -> Response:
    """Return every metric name with data."""
    body: schemas.MetricList = {"metrics": current_store().list_metrics()}
    return jsonify(body)

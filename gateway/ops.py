"""Operational endpoints: /healthz (process up), /readyz (store reachable), /metrics."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from gateway import schemas
from gateway.extension import current_store
from gateway.metrics import current_metrics
from gateway.openapi import Operation, operation

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
@operation(
    Operation(
        summary="Liveness: the process answers",
        tag="ops",
        response=schemas.Status,
        strict_query=False,
    )
)
def healthz() -> Response:
    """Answer 200 while the process serves requests."""
    body: schemas.Status = {"status": "ok"}
    return jsonify(body)


@bp.get("/readyz")
@operation(
    Operation(
        summary="Readiness: the store answers",
        tag="ops",
        response=schemas.Status,
        errors=(502, 503),
        strict_query=False,
    )
)
def readyz() -> Response:
    """Answer 200 when the store answers a ping, else 503 (problem+json)."""
    current_store().ping()
    body: schemas.Status = {"status": "ready"}
    return jsonify(body)


@bp.get("/metrics")
@operation(
    Operation(
        summary="Prometheus metrics",
        tag="ops",
        response="text/plain",
        description="Request count and latency histogram by method, route template and status.",
        strict_query=False,
    )
)
def metrics() -> Response:
    """Return the Prometheus text exposition."""
    return current_metrics().exposition()

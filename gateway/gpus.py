"""GET /api/v1/gpus (filtered, paged by uuid) and GET /api/v1/gpus/{id} (descriptor + latest)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from gateway import cursor, lookup, schemas
from gateway.catalog_cache import current_cache
from gateway.extension import current_store
from gateway.openapi import Operation, operation
from gateway.params import CURSOR, DEFAULT_LIMIT, LIMIT, Param, text

bp = Blueprint("gpus", __name__, url_prefix="/api/v1")
HOSTNAME = Param("hostname", "Only GPUs of this host (exact match).", {"type": "string"}, text)
MODEL = Param(
    "model",
    "Only GPUs whose model name contains this text, ignoring case "
    "(`H100` matches `NVIDIA H100 80GB HBM3`).",
    {"type": "string"},
    text,
)
STORE_ERRORS = (502, 503)


@bp.get("/gpus")
@operation(
    Operation(
        summary="List GPUs with data",
        tag="gpus",
        response=schemas.GpuPage,
        description="Every GPU with stored data, one entry per uuid (so a host-local index "
        "shows up once per host), read from the GPU catalog. Order: the catalog's, a stable "
        "hash of the uuid and then the uuid, so a page reads only the catalog shards it "
        "covers whatever the fleet size; follow `next_cursor` for the next page.",
        query=(HOSTNAME, MODEL, LIMIT, CURSOR),
        errors=(400, *STORE_ERRORS),
    )
)
def list_gpus() -> Response:
    """Return one page of GPUs (served from the catalog cache for a moment)."""
    hostname, model = HOSTNAME.one(request.args), MODEL.one(request.args)
    limit = LIMIT.one(request.args) or DEFAULT_LIMIT
    query = cursor.fingerprint("gpus", "catalog-order", hostname, model)
    token = CURSOR.one(request.args)
    after = cursor.uuid_key(token, query) if token else None

    def page() -> bytes:
        found = current_store().list_gpus(hostname, model, limit + 1, after)
        body: schemas.GpuPage = {
            "gpus": [lookup.describe(g) for g in found[:limit]],
            "next_cursor": cursor.encode([found[limit - 1].uuid], query)
            if len(found) > limit
            else None,
        }
        return jsonify(body).get_data()

    data = current_cache().get((hostname, model, limit, after), page)
    return Response(data, mimetype="application/json")


@bp.get("/gpus/<path:gpu_id>")  # path: a `Hostname/gpu_id` identity has a `/`
@operation(
    Operation(
        summary="One GPU and the newest value of each metric",
        tag="gpus",
        response=schemas.GpuDetail,
        path={"gpu_id": lookup.ID_HELP},
        errors=(400, 404, 409, *STORE_ERRORS),
    )
)
def get_gpu(gpu_id: str) -> Response:
    """Return a GPU's descriptor and latest values."""
    store = current_store()
    gpu = lookup.resolve(store, gpu_id)
    body: schemas.GpuDetail = {
        "gpu": lookup.describe(gpu),
        "latest": lookup.latest_values(store.latest(gpu.uuid)),
    }
    return jsonify(body)

"""The OpenAPI document: generated from the code, committed fresh, valid OpenAPI 3.1."""

from __future__ import annotations

import json
from pathlib import Path

from openapi_spec_validator import validate

from gateway import openapi
from gateway.app import create_app
from gateway.config import GatewayConfig

COMMITTED = Path(openapi.__file__).with_name("openapi.json")


def generated() -> dict:
    return openapi.document(create_app(GatewayConfig()))


def test_committed_document_is_fresh() -> None:
    assert COMMITTED.read_text() == openapi.render(generated()), (
        "gateway/openapi.json is stale: run `make openapi-gen` and commit it"
    )
    assert openapi.main(["--check", "--out", str(COMMITTED)]) == 0


def test_check_fails_on_a_stale_file(tmp_path) -> None:
    stale = tmp_path / "openapi.json"
    stale.write_text("{}\n")
    assert openapi.main(["--check", "--out", str(stale)]) == 1
    assert openapi.main(["--out", str(stale)]) == 0
    assert json.loads(stale.read_text()) == generated()


def test_document_validates_against_openapi_schema() -> None:
    validate(generated())


def test_document_covers_the_routes_users_know() -> None:
    doc = generated()
    assert {
        "/api/v1/gpus",
        "/api/v1/gpus/{gpu_id}",
        "/api/v1/gpus/{gpu_id}/telemetry",
        "/api/v1/hosts",
        "/api/v1/latest",
        "/api/v1/metrics",
        "/api/v1/models",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    } == set(doc["paths"])
    telemetry = doc["paths"]["/api/v1/gpus/{gpu_id}/telemetry"]["get"]
    names = [p["name"] for p in telemetry["parameters"]]
    assert names == [
        "gpu_id",
        "start_time",
        "end_time",
        "metric",
        "limit",
        "cursor",
        "every",
        "agg",
    ]
    assert set(telemetry["responses"]) == {
        "200",
        "400",
        "401",
        "403",
        "404",
        "409",
        "414",
        "431",
        "502",
        "503",
    }
    assert telemetry["security"] == [{"bearerAuth": []}]
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert "security" not in doc["paths"]["/healthz"]["get"]
    latest = doc["paths"]["/api/v1/latest"]["get"]
    metric = next(p for p in latest["parameters"] if p["name"] == "metric")
    assert metric["required"] is True and metric["schema"]["type"] == "array"
    assert latest["security"] == [{"bearerAuth": []}]
    problem = telemetry["responses"]["409"]["content"]["application/problem+json"]
    assert problem["schema"] == {"$ref": "#/components/schemas/Problem"}


def test_served_document_is_the_generated_one(client) -> None:
    assert client.get("/openapi.json").get_json() == generated()

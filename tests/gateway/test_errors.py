"""Every 400 case answers RFC 9457 problem+json naming the parameter; never a 500."""

from __future__ import annotations

import pytest

from gateway import cursor
from tests.gateway import data
from tests.gateway.test_api import TELEMETRY, problem

TOO_LONG = "x" * 300


@pytest.mark.parametrize(
    ("query", "parameter", "detail"),
    [
        ("start_time=2023-11-14T22:13:25Z&end_time=2023-11-14T22:13:24Z", "start_time", "after"),
        ("start_time=1700000005&end_time=1700000004.999999999", "start_time", "after"),
        ("start_time=yesterday", "start_time", "neither RFC 3339"),
        ("end_time=2023-13-01T00:00:00Z", "end_time", "month"),
        ("start_time=2023-11-14T22:13:20", "start_time", "neither RFC 3339"),
        ("start_time=", "start_time", "neither RFC 3339"),
        ("end_time=99999999999", "end_time", "latest storable"),
        ("start_time=1&start_time=2", "start_time", "given 2 times"),
        ("limit=0", "limit", "[1, 10000]"),
        ("limit=10001", "limit", "[1, 10000]"),
        ("limit=ten", "limit", "[1, 10000]"),
        ("limit=-5", "limit", "[1, 10000]"),
        ("limit=", "limit", "[1, 10000]"),
        ("metric=bad%20name", "metric", "not a metric name"),
        ("metric=DCGM_FI_DEV_GPU_UTIL&metric=", "metric", "not a metric name"),
        ("metric=" + "M" * 300, "metric", "not a metric name"),
        ("cursor=garbage", "cursor", "cursor"),
        ("cursor=", "cursor", "must not be empty"),
        ("every=1w", "every", "duration"),
        ("every=0s", "every", "duration"),
        ("agg=max", "agg", "needs every"),
        ("every=1m&agg=median", "agg", "one of"),
        ("start=1700000000", "start", "unknown query parameter"),
    ],
)
def test_telemetry_400(client, query: str, parameter: str, detail: str) -> None:
    body = problem(client.get(f"{TELEMETRY}?{query}"), 400)
    assert body["parameter"] == parameter
    assert detail in body["detail"]
    assert body["instance"] == TELEMETRY


def test_cursor_of_another_query_is_400(client) -> None:
    page = client.get(f"{TELEMETRY}?limit=1").get_json()
    body = problem(
        client.get(f"{TELEMETRY}?limit=1&metric={data.UTIL}&cursor={page['next_cursor']}"), 400
    )
    assert "different query" in body["detail"]
    forged = cursor.encode(["not-a-time", 5], cursor.fingerprint("x"))
    problem(client.get(f"{TELEMETRY}?cursor={forged}"), 400)


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("limit=0", "limit"),
        ("hostname=", "hostname"),
        (f"model={TOO_LONG}", "model"),
        ("hostname=a%01b", "hostname"),
        ("cursor=%%%", "cursor"),
        ("page=2", "page"),
    ],
)
def test_gpu_list_400(client, query: str, parameter: str) -> None:
    assert problem(client.get(f"/api/v1/gpus?{query}"), 400)["parameter"] == parameter


def test_gpu_list_cursor_from_other_filter_is_400(client) -> None:
    token = client.get("/api/v1/gpus?limit=1").get_json()["next_cursor"]
    problem(client.get(f"/api/v1/gpus?limit=1&hostname=host-1&cursor={token}"), 400)


def test_bad_gpu_id_is_400_not_500(client) -> None:
    problem(client.get(f"/api/v1/gpus/{TOO_LONG}"), 400)
    problem(client.get("/api/v1/gpus/a%07b/telemetry"), 400)


def test_unknown_route_and_method_are_problems(client) -> None:
    problem(client.get("/api/v1/nothing"), 404)
    resp = client.post("/api/v1/gpus")
    problem(resp, 405)
    assert "GET" in resp.headers["Allow"]


@pytest.mark.parametrize(
    ("path", "key"),
    [("/api/v1/gpus", "gpus"), ("/api/v1/hosts", "hosts"), ("/api/v1/metrics", "metrics"),
     ("/api/v1/models", "models"), (TELEMETRY, "points")],
)  # fmt: skip
def test_a_cursor_holding_a_lone_surrogate_is_400(client, path: str, key: str) -> None:
    """A real cursor whose name is now a lone surrogate (valid JSON, no UTF-8): a 400
    before any store sees it (it was a 500)."""
    import base64
    import json

    issued = client.get(f"{path}?limit=1").get_json()["next_cursor"]
    version, query, position = json.loads(base64.urlsafe_b64decode(issued + "=" * 4))
    position[-1] = "\ud800"
    forged = base64.urlsafe_b64encode(json.dumps([version, query, position]).encode()).decode()
    body = problem(client.get(f"{path}?limit=1&cursor={forged.rstrip('=')}"), 400)
    assert body["parameter"] == "cursor"

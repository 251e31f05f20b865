"""The REST API through Flask's test client, on a real SQLite file and a real InfluxDB."""

from __future__ import annotations

import pytest

from gateway import lookup
from gateway.errors import Conflict
from gateway.times import format_time
from store import GpuSummary
from store.catalog import gpu_key, name_key
from tests.gateway import data
from tests.gateway.data import METRICS, T0, TEMP, TIMES, UTIL, S

UUID = "GPU-h1-0"
TELEMETRY = f"/api/v1/gpus/{UUID}/telemetry"


def problem(resp, status: int) -> dict:
    """Return the problem+json body after checking status and media type."""
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.content_type == "application/problem+json"
    body = resp.get_json(force=True)
    assert body["status"] == status and body["title"] and body["detail"]
    assert "Traceback" not in resp.get_data(as_text=True)
    return body


def keys(points: list[dict]) -> list[tuple[str, str]]:
    return [(p["time"], p["metric"]) for p in points]


def catalog_order(uuids) -> list[str]:
    return sorted(uuids, key=gpu_key)


def test_list_gpus_has_every_gpu_once_in_catalog_order(client) -> None:
    body = client.get("/api/v1/gpus").get_json()
    assert [g["uuid"] for g in body["gpus"]] == catalog_order(g.uuid for g in data.GPUS)
    assert body["next_cursor"] is None
    first = body["gpus"][0]
    assert first["first_seen"] == format_time(TIMES[0])
    assert first["last_seen"] == format_time(TIMES[-1])
    assert first["container"] is None


def test_list_gpus_filters_and_pages(client) -> None:
    body = client.get("/api/v1/gpus?hostname=host-2").get_json()
    assert [g["uuid"] for g in body["gpus"]] == catalog_order(["GPU-h2-0", "GPU-h2-1"])
    for model in ("NVIDIA A100-SXM4-80GB", "a100", "A100-sxm4"):  # case-insensitive substring
        body = client.get("/api/v1/gpus", query_string={"model": model}).get_json()
        assert [g["uuid"] for g in body["gpus"]] == [data.UNIQUE.uuid]
    body = client.get("/api/v1/gpus", query_string={"model": "h100"}).get_json()
    assert len(body["gpus"]) == len(data.GPUS) - 1
    body = client.get("/api/v1/gpus", query_string={"model": "L40S"}).get_json()
    assert body == {"gpus": [], "next_cursor": None}
    seen, token = [], None
    while True:
        args = {"limit": 3, **({"cursor": token} if token else {})}
        page = client.get("/api/v1/gpus", query_string=args).get_json()
        seen += [g["uuid"] for g in page["gpus"]]
        token = page["next_cursor"]
        if token is None:
            break
    assert seen == catalog_order(g.uuid for g in data.GPUS)


def test_gpu_detail_has_latest_per_metric(client) -> None:
    body = client.get(f"/api/v1/gpus/{UUID}").get_json()
    assert body["gpu"]["uuid"] == UUID and body["gpu"]["hostname"] == "host-1"
    assert [v["metric"] for v in body["latest"]] == sorted(METRICS)
    for v in body["latest"]:
        assert v["time"] == format_time(TIMES[-1])
        assert v["value"] == data.value(v["metric"], TIMES[-1])
        assert v["source_time"] == format_time(TIMES[-1] - S)


def test_ambiguous_index_is_409_with_candidates(client) -> None:
    for path in ("/api/v1/gpus/1", "/api/v1/gpus/1/telemetry"):
        body = problem(client.get(path), 409)
        assert {(c["uuid"], c["hostname"]) for c in body["candidates"]} == {
            ("GPU-h0-1", "host-0"),
            ("GPU-h1-1", "host-1"),
            ("GPU-h2-1", "host-2"),
        }


def test_single_host_index_resolves(client) -> None:
    body = client.get("/api/v1/gpus/5/telemetry?limit=1").get_json()
    assert body["gpu"]["uuid"] == data.UNIQUE.uuid
    assert len(body["points"]) == 1


def test_an_index_pages_with_the_cursors_its_uuid_gets(client) -> None:
    """A uuid's page is one store read with its GPU; an index (and its cursor) resolves first."""
    by_uuid, by_index = f"/api/v1/gpus/{data.UNIQUE.uuid}/telemetry", "/api/v1/gpus/5/telemetry"
    seen: dict[str, list[tuple[str, str]]] = {}
    for path in (by_uuid, by_index):
        seen[path], args = [], {"limit": "3"}
        while True:
            body = client.get(path, query_string=args).get_json()
            assert body["gpu"]["uuid"] == data.UNIQUE.uuid
            seen[path] += keys(body["points"])
            if body["next_cursor"] is None:
                break
            args["cursor"] = body["next_cursor"]
    assert seen[by_uuid] == seen[by_index] and len(seen[by_uuid]) > 3
    bad = problem(client.get(by_uuid, query_string={"cursor": "not-a-cursor"}), 400)
    assert bad["parameter"] == "cursor"


@pytest.mark.parametrize("gpu_id", ["GPU-nope", "6", "99999"])
def test_unknown_gpu_is_404(client, gpu_id: str) -> None:
    problem(client.get(f"/api/v1/gpus/{gpu_id}"), 404)
    problem(client.get(f"/api/v1/gpus/{gpu_id}/telemetry"), 404)
    # the GPU is looked up before the metrics and the cursor are judged
    problem(client.get(f"/api/v1/gpus/{gpu_id}/telemetry?metric=NOPE&cursor=x"), 404)


def test_telemetry_all_points_in_order_with_identity_once(client) -> None:
    body = client.get(TELEMETRY).get_json()
    assert body["gpu"]["uuid"] == UUID
    expected = [(format_time(t), m) for t in TIMES for m in sorted(METRICS)]
    assert keys(body["points"]) == expected
    assert set(body["points"][0]) == {"time", "metric", "value", "source_time"}
    # The source's own time of every point is served beside the ingest time.
    assert [p["source_time"] for p in body["points"]] == [
        format_time(t - S) for t in TIMES for _ in METRICS
    ]
    assert body["next_cursor"] is None


@pytest.mark.parametrize(
    "stamp",
    [
        format_time(T0 + 3 * S),
        "2023-11-14T22:13:23Z",
        "2023-11-15T00:13:23+02:00",
        "2023-11-14T16:43:23.000-05:30",
        "1700000003",
        "1700000003.0",
    ],
)
def test_equality_edge_returns_the_points_at_that_time(client, stamp: str) -> None:
    args = {"start_time": stamp, "end_time": stamp}
    body = client.get(TELEMETRY, query_string=args).get_json()
    assert keys(body["points"]) == [(format_time(T0 + 3 * S), m) for m in sorted(METRICS)]


def test_both_bounds_inclusive_and_one_ns_outside_excluded(client) -> None:
    args = {"start_time": format_time(T0 + 2 * S), "end_time": format_time(T0 + 4 * S)}
    body = client.get(TELEMETRY, query_string=args).get_json()
    assert {p["time"] for p in body["points"]} == {format_time(T0 + k * S) for k in (2, 3, 4)}
    args = {"start_time": format_time(T0 + 2 * S + 1), "end_time": format_time(T0 + 4 * S - 1)}
    body = client.get(TELEMETRY, query_string=args).get_json()
    assert {p["time"] for p in body["points"]} == {format_time(T0 + 3 * S)}


def test_metric_filter_repeatable(client) -> None:
    body = client.get(f"{TELEMETRY}?metric={UTIL}").get_json()
    assert {p["metric"] for p in body["points"]} == {UTIL}
    assert body["metrics"] == [UTIL]
    body = client.get(f"{TELEMETRY}?metric={UTIL}&metric={TEMP}&limit=2").get_json()
    assert keys(body["points"]) == [(format_time(T0), TEMP), (format_time(T0), UTIL)]


def test_unknown_metric_is_a_400_listing_the_known_ones(client) -> None:
    resp = client.get(f"{TELEMETRY}?metric={UTIL}&metric=DCGM_FI_DEV_GPU_UTILL")
    assert resp.status_code == 400
    assert resp.mimetype == "application/problem+json"
    body = resp.get_json()
    assert body["parameter"] == "metric"
    assert "'DCGM_FI_DEV_GPU_UTILL'" in body["detail"] and UTIL in body["detail"]
    assert body["known_metrics"] == sorted(METRICS)
    # a metric that arrives later is known at once (the app asks the store again on a miss)
    assert client.get(f"{TELEMETRY}?metric={UTIL}").status_code == 200


def test_a_plus_sent_unencoded_gets_a_hint_to_url_encode_it(client) -> None:
    resp = client.get(f"{TELEMETRY}?start_time=2024-05-01T12:00:00+02:00")
    assert resp.status_code == 400
    detail = resp.get_json()["detail"]
    assert "URL-encode it as %2B" in detail and detail.startswith("start_time:")
    ok = client.get(f"{TELEMETRY}?start_time=2024-05-01T12:00:00%2B02:00")
    assert ok.status_code == 200


def test_downsampling(client) -> None:
    args = {"every": "2s", "agg": "max", "metric": UTIL}
    body = client.get(TELEMETRY, query_string=args).get_json()
    assert body["downsampling"] == {"every": "2s", "agg": "max"}
    assert [(p["time"], p["value"]) for p in body["points"]] == [
        (format_time(T0 + k * S), k + 1.5) for k in range(0, 10, 2)
    ]
    for agg, first in (("mean", 1.0), ("min", 0.5), ("last", 1.5)):
        args = {"every": "2s", "agg": agg, "metric": UTIL, "limit": 1}
        body = client.get(TELEMETRY, query_string=args).get_json()
        assert body["points"] == [
            {"time": format_time(T0), "metric": UTIL, "value": first, "source_time": None}
        ]
    body = client.get(TELEMETRY, query_string={"every": "5s", "metric": TEMP}).get_json()
    assert [p["value"] for p in body["points"]] == [2.0, 7.0]  # default agg: mean


def test_downsampled_pages_equal_one_request(client) -> None:
    base = {"every": "2s", "agg": "mean", "start_time": format_time(T0 + S)}
    whole = client.get(TELEMETRY, query_string=base).get_json()["points"]
    assert whole[0]["time"] == format_time(T0)  # the cut first window keeps its aligned start
    assert whole[0]["value"] == 1.0  # ...and aggregates only points >= start_time
    paged, token = [], None
    while True:
        args = {**base, "limit": 3, **({"cursor": token} if token else {})}
        page = client.get(TELEMETRY, query_string=args).get_json()
        paged += page["points"]
        token = page["next_cursor"]
        if token is None:
            break
    assert paged == whole


def test_hosts_and_metrics(client) -> None:
    hosts = sorted((f"host-{h}" for h in range(4)), key=lambda h: name_key("host", h))
    assert client.get("/api/v1/hosts").get_json() == {"hosts": hosts, "next_cursor": None}
    body = client.get("/api/v1/metrics").get_json()
    assert body == {"metrics": sorted(METRICS), "next_cursor": None}


def test_models_lists_each_gpu_model_once_sorted(client) -> None:
    """The names a fleet page's model filter offers, read from the catalog, not the GPUs."""
    models = sorted({g.model for g in data.GPUS})
    assert len(models) == 2
    assert client.get("/api/v1/models").get_json() == {"models": models, "next_cursor": None}
    body = client.get("/api/v1/models?limit=1").get_json()
    assert body["models"] == models[:1] and body["next_cursor"]
    body = client.get(f"/api/v1/models?limit=1&cursor={body['next_cursor']}").get_json()
    assert body == {"models": models[1:], "next_cursor": None}
    for bad in ("limit=0", "limit=10001", "limit=ten", "cursor=garbage", "model=h100"):
        problem(client.get(f"/api/v1/models?{bad}"), 400)


@pytest.mark.parametrize(
    ("path", "field"),
    [("/api/v1/hosts", "hosts"), ("/api/v1/metrics", "metrics"), ("/api/v1/models", "models")],
)
def test_hosts_and_metrics_page(client, path: str, field: str) -> None:
    everything = client.get(path).get_json()[field]
    seen, token = [], None
    while True:
        page = client.get(path, query_string={"limit": 1, **({"cursor": token} if token else {})})
        body = page.get_json()
        assert len(body[field]) == 1
        seen += body[field]
        token = body["next_cursor"]
        if token is None:
            break
    assert seen == everything and len(seen) > 1
    first = client.get(path, query_string={"limit": 1}).get_json()["next_cursor"]
    for other in {"/api/v1/hosts", "/api/v1/metrics", "/api/v1/models"} - {path}:
        problem(client.get(other, query_string={"cursor": first}), 400)


def test_healthz_and_readyz(client) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ready"}


def test_a_gpu_known_by_hostname_slash_index_can_be_addressed(fresh, fresh_client) -> None:
    """Without a uuid the streamer names a GPU `Hostname/gpu_id` (SPEC §1); /gpus listed it,
    but /gpus/{id}, its telemetry and its web page answered 404: the route's `{id}` could
    not hold the `/`, encoded (%2F) or not."""
    nameless = data.Gpu(uuid="host-9/3", hostname="host-9", gpu=3, device="", model=data.MODEL)
    fresh.store.write(data.points((nameless,), TIMES[:3]))
    for gpu_url in ("/api/v1/gpus/host-9%2F3", "/api/v1/gpus/host-9/3"):
        resp = fresh_client.get(gpu_url)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        assert resp.get_json()["gpu"]["uuid"] == "host-9/3"
        resp = fresh_client.get(f"{gpu_url}/telemetry?metric={UTIL}")
        assert resp.status_code == 200, resp.get_data(as_text=True)
        assert [p["time"] for p in resp.get_json()["points"]] == [format_time(t) for t in TIMES[:3]]
    page = fresh_client.get("/ui/gpus/host-9%2F3")
    assert page.status_code == 200 and "host-9/3" in page.get_data(as_text=True)
    assert fresh_client.get("/api/v1/gpus/host-9%2F4").status_code == 404


class _Fleet:
    """The two store reads `lookup.resolve` makes, over a fixed list of GPUs."""

    def __init__(self, *gpus: GpuSummary) -> None:
        self.gpus = gpus

    def get_gpu(self, uuid: str) -> GpuSummary | None:
        return next((g for g in self.gpus if g.uuid == uuid), None)

    def gpus_by_index(self, index: int, limit: int) -> list[GpuSummary]:
        return [g for g in self.gpus if g.gpu == index][:limit]


def test_an_exact_uuid_wins_over_a_host_local_index() -> None:
    """A GPU whose uuid is all digits: before, "5" was read as an index only (409 or the
    other GPU), and that GPU could not be reached at all."""
    digits = GpuSummary("5", "host-a", 0, "nvidia0", "m", 1, 2)
    fives = [GpuSummary(f"GPU-{h}-5", h, 5, "nvidia5", "m", 1, 2) for h in ("host-b", "host-c")]
    assert lookup.resolve(_Fleet(digits, *fives), "5") is digits  # type: ignore[arg-type]
    assert lookup.resolve(_Fleet(digits, fives[0]), "5") is digits  # type: ignore[arg-type]
    assert lookup.resolve(_Fleet(digits, fives[0]), "0") is digits  # type: ignore[arg-type]
    with pytest.raises(Conflict):
        lookup.resolve(_Fleet(*fives), "5")  # type: ignore[arg-type]
    assert lookup.resolve(_Fleet(fives[0]), "5") is fives[0]  # type: ignore[arg-type]

"""GET /api/v1/latest: a page of GPUs with their newest values, on both stores.

Through Flask's test client on the seeded stores, and the 400s through a real gunicorn.
"""

from __future__ import annotations

import json

import pytest

from gateway.times import format_time
from tests.gateway import data
from tests.gateway.conftest import Gateway
from tests.gateway.data import TEMP, TIMES, UTIL, S
from tests.gateway.test_api import catalog_order, problem

LATEST = "/api/v1/latest"


def pages(client, **args) -> list[dict]:
    """Every entry of every page of GET /api/v1/latest with `args`, following cursors."""
    entries, token = [], None
    while True:
        query = {**args, **({"cursor": token} if token else {})}
        body = client.get(LATEST, query_string=query).get_json()
        entries += body["gpus"]
        token = body["next_cursor"]
        if token is None:
            return entries


def test_every_gpu_in_catalog_order_with_its_newest_value(client) -> None:
    body = client.get(f"{LATEST}?metric={UTIL}").get_json()
    assert body["metrics"] == [UTIL] and body["next_cursor"] is None
    assert [e["gpu"]["uuid"] for e in body["gpus"]] == catalog_order(g.uuid for g in data.GPUS)
    for entry in body["gpus"]:
        assert entry["latest"] == [
            {
                "metric": UTIL,
                "time": format_time(TIMES[-1]),
                "value": data.value(UTIL, TIMES[-1]),
                "source_time": format_time(TIMES[-1] - S),
            }
        ]


def test_each_entry_is_what_the_gpu_detail_says(client) -> None:
    """The same descriptor and values as GET /api/v1/gpus/{id}, for several metrics at once."""
    body = client.get(LATEST, query_string={"metric": [UTIL, TEMP, UTIL]}).get_json()
    assert body["metrics"] == sorted([UTIL, TEMP])
    listed = client.get("/api/v1/gpus").get_json()["gpus"]
    assert [e["gpu"] for e in body["gpus"]] == listed
    for entry in body["gpus"]:
        assert entry == client.get(f"/api/v1/gpus/{entry['gpu']['uuid']}").get_json()


def test_pages_and_filters_follow_the_gpu_list(client) -> None:
    for limit in (1, 2, 5):
        paged = pages(client, metric=UTIL, limit=limit)
        assert [e["gpu"]["uuid"] for e in paged] == catalog_order(g.uuid for g in data.GPUS)
    on_host = pages(client, metric=UTIL, hostname="host-2", limit=1)
    assert [e["gpu"]["uuid"] for e in on_host] == catalog_order(["GPU-h2-0", "GPU-h2-1"])
    a100 = pages(client, metric=TEMP, model="a100")
    assert [(e["gpu"]["uuid"], e["latest"][0]["value"]) for e in a100] == [
        (data.UNIQUE.uuid, data.value(TEMP, TIMES[-1]))
    ]
    assert client.get(f"{LATEST}?metric={UTIL}&model=L40S").get_json()["gpus"] == []


def test_a_gpu_without_the_metric_is_listed_without_a_value(fresh, fresh_client) -> None:
    quiet = data.gpu(7, 0)
    fresh.store.write(data.points((quiet,), TIMES[:1], metrics=(TEMP,)))
    entries = {e["gpu"]["uuid"]: e["latest"] for e in pages(fresh_client, metric=UTIL, limit=3)}
    assert set(entries) == {g.uuid for g in (*data.GPUS, quiet)}
    assert entries[quiet.uuid] == []
    assert entries[data.GPUS[0].uuid][0]["value"] == data.value(UTIL, TIMES[-1])
    newer = TIMES[-1] + S
    fresh.store.write(data.points((data.GPUS[0],), (newer,), metrics=(UTIL,)))
    on_host = pages(fresh_client, metric=UTIL, hostname=data.GPUS[0].hostname, model="h100")
    newest = {e["gpu"]["uuid"]: e["latest"][0]["time"] for e in on_host}
    assert newest == {g.uuid: format_time(newer if g == data.GPUS[0] else TIMES[-1])
                      for g in data.GPUS if g.hostname == data.GPUS[0].hostname}  # fmt: skip


def test_headers_are_those_of_the_other_api_answers(client) -> None:
    ours = client.get(f"{LATEST}?metric={UTIL}")
    theirs = client.get("/api/v1/gpus")
    assert ours.status_code == 200 and ours.content_type == "application/json"
    for header in ("Cache-Control", "Content-Security-Policy", "X-Content-Type-Options"):
        assert ours.headers[header] == theirs.headers[header]


BAD = [
    ("", "metric", "required"),
    ("limit=10", "metric", "required"),
    ("metric=bad%20name", "metric", "not a metric name"),
    (f"metric={UTIL}&metric=", "metric", "not a metric name"),
    ("metric=DCGM_FI_DEV_NOPE", "metric", "unknown"),
    (f"metric={UTIL}&limit=0", "limit", "[1, 10000]"),
    (f"metric={UTIL}&limit=10001", "limit", "[1, 10000]"),
    (f"metric={UTIL}&metric={TEMP}&limit=5001", "limit", "at most 5000 GPUs with 2 metrics"),
    (f"metric={UTIL}&limit=1&limit=2", "limit", "given 2 times"),
    (f"metric={UTIL}&hostname=", "hostname", "must not be empty"),
    (f"metric={UTIL}&model=a%01b", "model", "control character"),
    (f"metric={UTIL}&cursor=%%%", "cursor", "base64url"),
    (f"metric={UTIL}&uuid=GPU-h1-0", "uuid", "unknown query parameter"),
]


@pytest.mark.parametrize(("query", "parameter", "detail"), BAD)
def test_bad_parameters_are_400_problems(client, query: str, parameter: str, detail: str) -> None:
    body = problem(client.get(f"{LATEST}?{query}"), 400)
    assert (body["parameter"], body["instance"]) == (parameter, LATEST)
    assert detail in body["detail"], body["detail"]


def test_more_metrics_than_a_page_holds_is_400(client) -> None:
    names = "&".join(f"metric=M{n}" for n in range(10_001))
    assert problem(client.get(f"{LATEST}?{names}"), 400)["parameter"] == "metric"


def test_a_cursor_of_another_query_is_400(client) -> None:
    token = client.get(f"{LATEST}?metric={UTIL}&limit=1").get_json()["next_cursor"]
    for query in (f"metric={TEMP}", f"metric={UTIL}&hostname=host-1"):
        body = problem(client.get(f"{LATEST}?{query}&limit=1&cursor={token}"), 400)
        assert "different query" in body["detail"]
    gpus_token = client.get("/api/v1/gpus?limit=1").get_json()["next_cursor"]
    problem(client.get(f"{LATEST}?metric={UTIL}&cursor={gpus_token}"), 400)


def test_under_gunicorn(gateway: Gateway) -> None:
    status, ctype, body = gateway.get(f"{LATEST}?metric={UTIL}&limit=2")
    page = json.loads(body)
    assert (status, ctype, len(page["gpus"])) == (200, "application/json", 2)
    assert page["gpus"][0]["latest"][0]["metric"] == UTIL
    for query, parameter, _ in BAD:
        status, ctype, body = gateway.get(f"{LATEST}?{query}")
        assert (status, ctype) == (400, "application/problem+json"), body
        assert json.loads(body)["parameter"] == parameter

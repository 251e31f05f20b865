"""The real thing: `gputel-gateway` under gunicorn (2 workers) on both stores."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.parse
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import GatewayConfig
from gateway.times import format_time
from tests.gateway import data
from tests.gateway.conftest import Gateway
from tests.gateway.data import METRICS, T0, S

REQUESTS = "gpu_telemetry_gateway_requests"


def get_json(gateway: Gateway, path: str) -> tuple[int, str, dict]:
    status, ctype, body = gateway.get(path)
    return status, ctype, json.loads(body)


def request_counts(gateway: Gateway) -> dict[tuple[str, str], float]:
    """Return {(route, status): count} summed over methods, from /metrics."""
    status, ctype, body = gateway.get("/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == f"{REQUESTS}_total":
                key = (sample.labels["route"], sample.labels["status"])
                counts[key] = counts.get(key, 0) + sample.value
    return counts


def test_endpoints_under_gunicorn(gateway: Gateway) -> None:
    status, _, body = get_json(gateway, "/api/v1/gpus?limit=2")
    assert status == 200 and len(body["gpus"]) == 2 and body["next_cursor"]
    stamp = urllib.parse.quote("2023-11-15T00:13:25+02:00")
    path = f"/api/v1/gpus/GPU-h2-1/telemetry?start_time={stamp}&end_time=1700000005"
    status, _, body = get_json(gateway, path)
    assert [p["time"] for p in body["points"]] == [format_time(T0 + 5 * S)] * len(METRICS)
    status, ctype, body = get_json(gateway, "/api/v1/gpus/0")
    assert (status, ctype, len(body["candidates"])) == (409, "application/problem+json", 3)
    status, _, body = get_json(gateway, "/api/v1/gpus/5")
    assert (status, body["gpu"]["uuid"]) == (200, data.UNIQUE.uuid)
    assert get_json(gateway, "/api/v1/gpus/GPU-none")[0] == 404
    status, ctype, body = get_json(gateway, "/api/v1/gpus/GPU-h0-0/telemetry?limit=0")
    assert (status, ctype, body["parameter"]) == (400, "application/problem+json", "limit")
    assert get_json(gateway, "/readyz")[:1] == (200,)


def test_metrics_count_every_worker_by_route_and_status(gateway: Gateway) -> None:
    before = request_counts(gateway)
    for _ in range(12):
        assert gateway.get("/api/v1/hosts")[0] == 200
    for _ in range(5):
        assert gateway.get("/api/v1/gpus/GPU-none")[0] == 404
    after = request_counts(gateway)
    hosts, missing = ("/api/v1/hosts", "200"), ("/api/v1/gpus/<gpu_id>", "404")
    assert after.get(hosts, 0) - before.get(hosts, 0) == 12
    assert after.get(missing, 0) - before.get(missing, 0) == 5
    body = gateway.get("/metrics")[2]
    assert f"{REQUESTS[:-9]}_request_duration_seconds_bucket" in body.decode()


def test_swagger_ui_and_openapi_offline(gateway: Gateway) -> None:
    status, ctype, page = gateway.get("/swagger/")
    assert (status, ctype.split(";")[0]) == (200, "text/html")
    html = page.decode()
    assert "http" not in html.replace('href="', "").split("<body>")[1]  # no CDN
    for asset in ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "gputel-init.js"):
        assert f'src="{asset}"' in html
        status, ctype, js = gateway.get(f"/swagger/{asset}")
        assert status == 200 and "javascript" in ctype and len(js) > 100
    status, ctype, css = gateway.get("/swagger/swagger-ui.css")
    assert status == 200 and ctype.startswith("text/css") and b"swagger-ui" in css
    assert gateway.get("/swagger/../../etc/passwd")[0] == 404
    assert gateway.get("/swagger/index.j2")[0] == 404
    status, _, doc = get_json(gateway, "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")


def test_influx_token_never_logged(influx_server, tmp_path) -> None:
    secret = "gputel-secret-token:do-not-log-42"
    conn = influx_server.create_database()
    config = GatewayConfig(
        store="influx", influx_url=conn.url, influx_bucket=conn.bucket, influx_token=secret
    )
    server = Gateway(config, tmp_path / "gateway.log", workers=1)
    try:
        assert server.get("/readyz")[0] == 200
        assert server.get("/api/v1/gpus")[0] == 200
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert "Current configuration" in log  # gunicorn's debug dump of its settings, as JSON
    assert secret not in log and "do-not-log-42" not in log


def connection_headers(port: int, requests: int) -> list[str | None]:
    """Return the Connection header of each answer to `requests` GETs on one client connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    found = []
    try:
        for _ in range(requests):
            conn.request("GET", "/api/v1/hosts")
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read())["hosts"]
            found.append(resp.getheader("Connection"))
    finally:
        conn.close()
    return found


def test_each_answer_closes_its_connection(gateway: Gateway) -> None:
    """The default gevent worker answers one request per connection on both stores, so a
    worker takes a new connection only when its loop is free (gateway/worker.py)."""
    assert connection_headers(gateway.port, 3) == ["close"] * 3
    assert "gateway.worker.GatewayWorker" in gateway.log_text()  # gunicorn's config dump


def worker_pids(gateway: Gateway) -> list[int]:
    """The gunicorn workers: children of the master (gputel-gateway execs gunicorn)."""
    assert gateway.proc is not None
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == gateway.proc.pid:
            found.append(int(stat.parent.name))
    return found


def open_files(pids: list[int]) -> int:
    return sum(len(list(Path(f"/proc/{pid}/fd").iterdir())) for pid in pids)


def test_open_files_stay_bounded_over_many_requests(gateway: Gateway) -> None:
    """One connection per request must not mean one store connection per request."""
    pids = worker_pids(gateway)
    assert len(pids) == 2
    for _ in range(100):  # every worker has opened what it keeps (store, metric files)
        assert gateway.get("/api/v1/gpus/GPU-h2-1")[0] == 200
    before = open_files(pids)
    for _ in range(200):
        assert gateway.get("/api/v1/gpus/GPU-h2-1")[0] == 200
    # A worker closes a connection's socket just after the client has read the answer: on a
    # loaded machine the last one or two may still be open for a moment (CI once saw +5).
    deadline = time.monotonic() + 5
    while open_files(pids) > before + 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_files(pids) <= before + 4  # (it was two files per request under gevent)


def test_an_oversized_request_line_gets_the_documented_414(gateway: Gateway) -> None:
    """gunicorn refuses a request line over 4,094 bytes before the app; the document says so."""
    status, ctype, body = gateway.get("/api/v1/hosts?" + "&".join(["limit=1"] * 700))
    assert (status, ctype) == (414, "application/problem+json")
    assert json.loads(body)["status"] == 414
    spec = json.loads((Path(__file__).parents[2] / "gateway" / "openapi.json").read_text())
    for path_item in spec["paths"].values():
        for op in path_item.values():
            for status_code in ("414", "431"):
                assert "application/problem+json" in op["responses"][status_code]["content"]


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /api/v1/gpus/" + b"A" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /api/v1/gpus HTTP/1.1\r\n" + b"X-Big: " + b"b" * 9_000 + b"\r\n\r\n", 431),
        (b"GET /api/v1/gpus HTTP/9.9\r\nHost: x\r\n\r\n", 400),
    ],
)
def test_requests_gunicorn_refuses_get_problem_json_too(gateway: Gateway, head, status) -> None:
    """Refused before the app runs (request line or header too large, bad version)."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass  # closed with our request line unread: the answer came before the reset
    top, _, body = answer.partition(b"\r\n\r\n")
    assert top.split(b"\r\n")[0].startswith(f"HTTP/1.1 {status} ".encode()), top
    assert b"Content-Type: application/problem+json" in top
    problem = json.loads(body)
    assert problem["status"] == status and problem["title"] and problem["detail"]


def test_invented_methods_share_one_label_value(gateway: Gateway) -> None:
    """A method is a label: one a client makes up per request is counted as `other`, so
    refused requests cannot grow /metrics (and the workers' memory) without bound."""
    for n in range(20):
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        try:
            conn.request(f"BREW{n}", "/api/v1/hosts")
            assert conn.getresponse().status == 405
        finally:
            conn.close()
    methods: dict[str, float] = {}
    for family in text_string_to_metric_families(gateway.get("/metrics")[2].decode()):
        for sample in family.samples:
            if sample.name == f"{REQUESTS}_total":
                method = sample.labels["method"]
                methods[method] = methods.get(method, 0) + sample.value
    assert not [m for m in methods if m.startswith("BREW")]
    assert methods["other"] >= 20

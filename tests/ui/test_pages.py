"""The web view's server side, in-process: routes, headers, the vendored library, the relay."""

from __future__ import annotations

import time
from pathlib import Path

from gateway.app import create_app
from gateway.config import GatewayConfig
from tests.fixtures.broker import free_port

VENDOR = Path(__file__).resolve().parents[2] / "gateway" / "ui" / "static" / "vendor" / "uplot"


def client(tmp_path, broker: str = ""):
    app = create_app(GatewayConfig(store=f"sqlite:{tmp_path / 'db'}", broker=broker))
    return app.test_client()


def test_root_redirects_and_pages_render_with_a_strict_policy(tmp_path):
    c = client(tmp_path)
    resp = c.get("/")
    assert resp.status_code == 302 and resp.headers["Location"] == "/ui/"
    for path in ("/ui/", "/ui/gpus/GPU-x", "/ui/pipeline"):
        resp = c.get(path)
        assert resp.status_code == 200 and resp.mimetype == "text/html"
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        body = resp.get_data(as_text=True)
        assert "http://" not in body and "https://" not in body  # nothing from another host
        assert "<script>" not in body  # only script files (the policy forbids inline code)


def test_a_uuid_in_the_address_is_escaped(tmp_path):
    resp = client(tmp_path).get("/ui/gpus/%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E")
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert "<img" not in body and "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in body


def test_uplot_is_served_from_the_gateway_with_its_licence(tmp_path):
    c = client(tmp_path)
    with c.get("/ui/static/vendor/uplot/uPlot.iife.min.js") as js:
        assert js.status_code == 200 and b"uPlot" in js.data and len(js.data) > 40_000
    with c.get("/ui/static/vendor/uplot/uPlot.min.css") as css:
        assert css.status_code == 200
    licence = (VENDOR / "LICENSE").read_text()
    assert licence.startswith("The MIT License") and "Leon Sorokin" in licence
    assert "uplot@1.6.32" in (VENDOR / "README.md").read_text()


def test_pipeline_relay_without_a_broker_and_with_a_dead_one(tmp_path):
    doc = client(tmp_path).get("/ui/api/pipeline").get_json()
    assert doc["broker"] is None and doc["topics"] == [] and doc["groups"] == []
    page = client(tmp_path).get("/ui/pipeline").get_data(as_text=True)
    assert "--broker HOST:PORT" in page
    dead = f"127.0.0.1:{free_port()}"
    resp = client(tmp_path, dead).get("/ui/api/pipeline")
    assert resp.status_code == 503 and resp.mimetype == "application/problem+json"
    assert resp.get_json()["detail"].startswith(f"broker {dead}:")


def test_pipeline_relay_reads_the_broker_at_most_once_a_second(tmp_path, broker):
    c = client(tmp_path, broker.address)
    first = c.get("/ui/api/pipeline").get_json()
    again = c.get("/ui/api/pipeline").get_json()
    assert first["broker"] == broker.address and again["read_at_ms"] == first["read_at_ms"]
    time.sleep(1.1)
    assert c.get("/ui/api/pipeline").get_json()["read_at_ms"] > first["read_at_ms"]


def test_unusable_broker_credentials_are_a_503_naming_the_file(tmp_path, monkeypatch):
    missing = tmp_path / "no-such.token"
    monkeypatch.setenv("GPUTEL_BROKER_TOKEN_FILE", str(missing))
    resp = client(tmp_path, "127.0.0.1:1").get("/ui/api/pipeline")
    assert resp.status_code == 503
    assert resp.get_json()["detail"].startswith("broker client settings:")
    assert str(missing) in resp.get_json()["detail"]

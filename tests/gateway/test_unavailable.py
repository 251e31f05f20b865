"""503 problem+json and a failing /readyz while InfluxDB is down; both recover when it is back."""

from __future__ import annotations

import json

import pytest

from gateway.config import GatewayConfig
from store import open_store
from tests.gateway.conftest import Backend, Gateway, app_for, make_backend

PATHS = (
    "/api/v1/gpus",
    "/api/v1/gpus/GPU-h0-0",
    "/api/v1/gpus/GPU-h0-0/telemetry",
    "/api/v1/hosts",
    "/api/v1/metrics",
    "/api/v1/models",
    "/readyz",
)


@pytest.fixture
def influx_backend(request, tmp_path) -> Backend:
    backend = make_backend("influx", request, tmp_path)
    backend.store.close()
    return backend


def test_store_down_is_503_and_readyz_flips(influx_backend, influx_server, tmp_path) -> None:
    server = Gateway(influx_backend.config, tmp_path / "gateway.log", workers=1)
    try:
        for app in app_for(influx_backend.config):
            client = app.test_client()
            assert client.get("/readyz").status_code == 200
            assert server.get("/readyz")[0] == 200
            influx_server.stop()
            try:
                for path in PATHS:
                    resp = client.get(path)
                    assert resp.status_code == 503, path
                    assert resp.content_type == "application/problem+json"
                    assert resp.headers["Retry-After"]
                    assert "store cannot be reached" in resp.get_json(force=True)["detail"]
                    status, ctype, body = server.get(path)
                    assert (status, ctype) == (503, "application/problem+json"), path
                    assert json.loads(body)["status"] == 503
                assert client.get("/healthz").status_code == 200
                assert server.get("/healthz")[0] == 200
            finally:
                influx_server.start()
            assert client.get("/readyz").status_code == 200
            assert server.get("/readyz")[0] == 200
            assert len(client.get("/api/v1/gpus").get_json()["gpus"]) == 7
    finally:
        server.stop()


def test_a_missing_sqlite_file_is_not_created_and_not_ready(tmp_path, caplog) -> None:
    """A mistyped --store made an empty database and a gateway that said ready, with 0 GPUs."""
    path = tmp_path / "typo.db"
    for app in app_for(GatewayConfig(store=f"sqlite:{path}")):
        client = app.test_client()
        for route in PATHS:
            resp = client.get(route)
            assert resp.status_code == 503, route
            assert resp.content_type == "application/problem+json"
        logged = [getattr(r, "error", "") for r in caplog.records]
        assert any(f"no SQLite database at {path}" in e for e in logged), logged
        assert not list(tmp_path.iterdir())  # nothing created: no db, -wal or -shm
        open_store(f"sqlite:{path}").close()  # the collector's first start
        assert client.get("/readyz").status_code == 200
        assert client.get("/api/v1/gpus").get_json()["gpus"] == []

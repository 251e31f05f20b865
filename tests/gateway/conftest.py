"""Gateway fixtures: stores of both kinds seeded with `data.seed()`, apps, and real gunicorn."""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.extension import extension
from store import Store, open_store
from tests.fixtures.influx import InfluxServer, free_port
from tests.fixtures.process import ManagedProcess
from tests.gateway import data

BIN = Path(sys.executable).parent


@dataclass
class Backend:
    """A seeded store and the gateway config that reads it."""

    kind: str
    config: GatewayConfig
    store: Store


def make_backend(kind: str, request: pytest.FixtureRequest, folder: Path) -> Backend:
    if kind == "sqlite":
        config = GatewayConfig(store=f"sqlite:{folder / 'telemetry.db'}")
        store = open_store(config.store)
    else:
        server: InfluxServer = request.getfixturevalue("influx_server")
        conn = server.create_database()
        config = GatewayConfig(
            store="influx",
            influx_url=conn.url,
            influx_org=conn.org,
            influx_bucket=conn.bucket,
            influx_token=conn.token,
        )
        store = open_store("influx", **conn.store_opts())
    store.write(data.seed())
    return Backend(kind, config, store)


@pytest.fixture(scope="module", params=["sqlite", "influx"])
def seeded(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[Backend]:
    """Return a store of each kind holding the data set; tests must not write to it."""
    backend = make_backend(request.param, request, tmp_path_factory.mktemp("seeded"))
    yield backend
    backend.store.close()


@pytest.fixture(params=["sqlite", "influx"])
def fresh(request: pytest.FixtureRequest, tmp_path) -> Iterator[Backend]:
    """Return a store of each kind holding the data set, private to one test."""
    backend = make_backend(request.param, request, tmp_path)
    yield backend
    backend.store.close()


def app_for(config: GatewayConfig) -> Iterator[Flask]:
    """Yield an app for `config` and close its store afterwards."""
    app = create_app(config)
    try:
        yield app
    finally:
        extension(app).close()


@pytest.fixture(scope="module")
def client(seeded: Backend) -> Iterator[FlaskClient]:
    """Return a test client of an app on the seeded store."""
    for app in app_for(seeded.config):
        yield app.test_client()


@pytest.fixture
def fresh_client(fresh: Backend) -> Iterator[FlaskClient]:
    """Return a test client of an app on a private store."""
    for app in app_for(fresh.config):
        yield app.test_client()


class Gateway(ManagedProcess):
    """One `gputel-gateway` process (gunicorn) on a free loopback port, healthy on return."""

    def __init__(
        self, config: GatewayConfig, log_path: Path, workers: int = 2, threads: int | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPUTEL_")}
        env.update(config.to_env())
        env.pop("GPUTEL_INFLUX_TOKEN", None)  # passed as a flag to prove it is never logged
        argv = [str(BIN / "gputel-gateway"), f"--bind=127.0.0.1:{self.port}"]
        argv += [f"--workers={workers}", "--log-level=debug"]
        env.pop("GPUTEL_GATEWAY_THREADS")  # the worker's default unless given
        if threads is not None:
            argv.append(f"--threads={threads}")
        if config.influx_token:
            argv.append(f"--influx-token={config.influx_token}")
        super().__init__(argv, log_path)
        self.spawn(env, inherit=False)
        self._wait_healthy()

    def _wait_healthy(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"gateway exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("gateway not healthy in time")

    def get(self, path: str) -> tuple[int, str, bytes]:
        """Return (status, content type, body) of GET `path`."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as resp:
                return resp.status, resp.headers["Content-Type"], resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.headers["Content-Type"], exc.read()

    def stop(self) -> None:
        """Stop gunicorn (SIGTERM, SIGKILL after 15 s) and wait for it."""
        self.terminate(timeout_s=15)


@pytest.fixture(scope="module")
def gateway(seeded: Backend, tmp_path_factory) -> Iterator[Gateway]:
    """Return a real gunicorn gateway (2 workers, the store default threads) on seeded data."""
    server = Gateway(seeded.config, tmp_path_factory.mktemp("gw") / "gateway.log")
    yield server
    server.stop()

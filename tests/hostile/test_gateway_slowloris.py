"""Slow HTTP clients against a real gunicorn gateway: well-behaved clients keep being served.

50 slowloris connections trickle header lines (one a second, reconnecting whenever the
server closes them) while two well-behaved clients request pages. The gateway runs as
`make run` runs it (1 worker) and as the chart does (2 workers), with the default worker
model and bounds. The trickle lasts 12 s here to keep the suite short (the default head
timeout is 5 s, so every slow connection is cut and reopened at least twice), from a process
of its own; `bench/gateway_slowloris.py` runs the full 60 s and measures the p99 there.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import HEAD_TIMEOUT_S, GatewayConfig
from store import open_store
from tests.fixtures.secure import Credentials
from tests.gateway import data
from tests.gateway.conftest import Gateway
from tests.gateway.test_auth import SecureGateway
from tests.hostile.slowloris import SlowlorisProcess, probe

SLOW = 50
TRICKLE_S = 12.0
BASELINE_S = 4.0
PATHS = [
    "/api/v1/gpus",
    f"/api/v1/gpus/{data.UNIQUE.uuid}",
    f"/api/v1/gpus/{data.UNIQUE.uuid}/telemetry?limit=100",
]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slowloris") / "telemetry.db"
    with open_store(f"sqlite:{path}") as store:
        store.write(data.seed())
    return path


@pytest.fixture(params=[1, 2], ids=["make_run_1_worker", "chart_2_workers"])
def gateway(request: pytest.FixtureRequest, db: Path, tmp_path: Path) -> Iterator[Gateway]:
    server = Gateway(GatewayConfig(store=f"sqlite:{db}"), tmp_path / "gw.log", request.param)
    yield server
    server.stop()


def metric(gateway: Gateway, name: str) -> float:
    status, _, body = gateway.get("/metrics")
    assert status == 200
    return sum(
        s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == name
    )


def test_slowloris_leaves_normal_requests_served(gateway: Gateway) -> None:
    baseline = probe("127.0.0.1", gateway.port, PATHS, BASELINE_S)
    attacker = SlowlorisProcess("127.0.0.1", gateway.port, SLOW, TRICKLE_S).start()
    try:
        time.sleep(1.5)  # every slow connection is in before the probe starts
        open_now = metric(gateway, "gpu_telemetry_gateway_connections")
        under = probe("127.0.0.1", gateway.port, PATHS, TRICKLE_S - 1.5)
        attack = attacker.result()
    finally:
        attacker.kill()

    # Well-behaved clients: >= 99 % served within the probe's 2 s timeout, throughput within
    # 50 % of the baseline, median latency unchanged. The p99 target (<= 100 ms) is a
    # performance figure: bench/gateway_slowloris.py measures it over 60 s (docs/benchmarks.md);
    # on these shared 2 cores a 10-s tail is mostly other processes' scheduling.
    figures = (baseline.summary(), under.summary())
    assert baseline.success_ratio == 1.0, baseline.failures[:5]
    assert under.success_ratio >= 0.99, (figures, under.failures[:5])
    assert under.quantile_ms(0.5) <= max(25, 2 * baseline.quantile_ms(0.5)), figures
    rate = lambda r, s: r.total / s  # noqa: E731
    assert rate(under, TRICKLE_S - 1.5) >= 0.5 * rate(baseline, BASELINE_S)
    # The bound: no slow connection is kept past the head timeout (plus the trickle's 1 s
    # granularity and scheduling slack), and the worker counted each one it cut.
    assert SLOW <= open_now <= SLOW + 5  # the slow ones were held open, cheaply, meanwhile
    assert attack.closed_by_server >= SLOW
    assert max(attack.held_s) <= HEAD_TIMEOUT_S + 2.0, sorted(attack.held_s)[-5:]
    assert min(attack.held_s) >= HEAD_TIMEOUT_S - 0.5
    assert metric(gateway, "gpu_telemetry_gateway_slow_clients_total") >= attack.closed_by_server


@pytest.fixture
def tls_gateway(tmp_path: Path, db: Path) -> Iterator[SecureGateway]:
    creds = Credentials(tmp_path / "creds")
    creds.add("grafana", "read")
    gw = SecureGateway(GatewayConfig(store=f"sqlite:{db}"), creds, tmp_path / "gw.log")
    yield gw
    gw.terminate(15)


def test_silent_tls_clients_are_cut_after_the_head_timeout(tls_gateway: SecureGateway) -> None:
    """A TLS handshake that never starts is a slow request head too."""
    silent = [socket.create_connection(("127.0.0.1", tls_gateway.port)) for _ in range(10)]
    started = time.monotonic()
    try:
        assert tls_gateway.get("/healthz")[0] == 200  # served meanwhile
        for sock in silent:
            sock.settimeout(HEAD_TIMEOUT_S + 5)
            assert sock.recv(1) == b""  # closed by the server, not by our timeout
        assert time.monotonic() - started <= HEAD_TIMEOUT_S + 2.0
    finally:
        for sock in silent:
            sock.close()

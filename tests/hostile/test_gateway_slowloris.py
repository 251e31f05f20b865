"""Slow HTTP clients against a real gunicorn gateway: well-behaved clients keep being served.

50 slowloris connections trickle header lines (one a second, reconnecting whenever the
server closes them) while two well-behaved clients request pages. The gateway runs as
`make run` runs it (1 worker) and as the chart does (2 workers), with the default worker
model and bounds. The trickle lasts 12 s here to keep the suite short (the default head
timeout is 5 s, so every slow connection is cut and reopened at least twice), from a process
of its own; `bench/gateway_slowloris.py` runs the full 60 s and measures the p99 there.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from swagger_ui_bundle import swagger_ui_path

from gateway.config import HEAD_TIMEOUT_S, GatewayConfig
from proto.batch import Gpu, PointBatch
from store import open_store
from tests.fixtures.influx import free_port
from tests.fixtures.process import ManagedProcess
from tests.fixtures.secure import Credentials
from tests.gateway import data
from tests.gateway.conftest import BIN, Gateway
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


def wide_store(path: Path, gpus: int) -> None:
    """GPUs with 200-character names: a page of 10,000 is ~10 MB, more than loopback buffers."""
    metrics = ["DCGM_FI_DEV_GPU_UTIL"]
    with open_store(f"sqlite:{path}") as store:
        for first in range(0, gpus, 1000):
            chunk = [
                Gpu(
                    f"GPU-{i:06d}-" + "u" * 200, f"host-{i // 8:05d}-" + "h" * 200, i % 8, "d" * 200
                )
                for i in range(first, min(first + 1000, gpus))
            ]
            batch = PointBatch(gpus=chunk, metrics=metrics)
            for gi in range(len(chunk)):
                batch.gpu_index.append(gi)
                batch.metric_index.append(0)
                batch.time_ns.append(data.T0)
                batch.value.append(1.0)
                batch.source_time_ns.append(data.T0)
            store.write(batch)


def test_clients_that_never_read_their_answer_are_cut_after_the_send_timeout(
    tmp_path: Path,
) -> None:
    """Before, 20 clients asking for a 10 MB page and never reading it held every slot of a
    `--max-connections 20` worker for as long as they liked: even /healthz timed out."""
    wide_store(tmp_path / "wide.db", 10_000)
    config = GatewayConfig(
        store=f"sqlite:{tmp_path / 'wide.db'}", max_connections=4, send_timeout_s=1.0
    )
    gateway = Gateway(config, tmp_path / "gw.log", workers=1)
    held = []
    try:
        for _ in range(4):  # every slot
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", gateway.port))
            sock.sendall(b"GET /api/v1/gpus?limit=10000 HTTP/1.1\r\nHost: x\r\n\r\n")
            held.append(sock)
        time.sleep(0.5)
        started = time.monotonic()
        status, _, _ = gateway.get("/healthz")  # waits in the backlog until slots free
        assert status == 200
        assert time.monotonic() - started < 8
        deadline = time.monotonic() + 20  # the one worker renders the four pages in turn
        while metric(gateway, "gpu_telemetry_gateway_slow_readers_total") < 4:
            assert time.monotonic() < deadline, gateway.log_tail()
            time.sleep(0.2)
        assert "did not take its answer within --send-timeout-s 1" in gateway.log_text()
        assert "Socket error processing request" not in gateway.log_text()
    finally:
        for sock in held:
            sock.close()
        gateway.stop()


class SmallSendBufferGateway(Gateway):
    """One `gputel-gateway` worker serving a listening socket made here with a small send
    buffer, which the connections it accepts inherit (as over a real network).

    The socket is handed over as systemd socket activation does (LISTEN_FDS, LISTEN_PID;
    gunicorn then serves it and ignores --bind, which only has to pass the CLI's check). On
    loopback the kernel grows a connection's send buffer to ~4 MiB, so a slow reader of a
    page smaller than that never makes the server wait (see gputel/probes.py).
    """

    def __init__(self, config: GatewayConfig, log_path: Path, sndbuf: int) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPUTEL_")}
        env.update(config.to_env(), LISTEN_FDS="1", PYTHONUNBUFFERED="1")
        env.pop("GPUTEL_GATEWAY_THREADS")
        fd = listener.fileno()
        # The listener at fd 3 and LISTEN_PID set to the pid gputel-gateway (then gunicorn)
        # runs as: a process of ours that execs it.
        handover = (
            f"import os, sys; os.dup2({fd}, 3); os.environ['LISTEN_PID'] = str(os.getpid()); "
            "os.execv(sys.argv[1], sys.argv[1:])"
        )
        argv = [sys.executable, "-c", handover, str(BIN / "gputel-gateway")]
        argv += [f"--bind=127.0.0.1:{free_port()}", "--workers=1", "--log-level=debug"]
        ManagedProcess.__init__(self, argv, log_path)
        with listener, open(log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                argv, stdout=logf, stderr=subprocess.STDOUT, env=env, pass_fds=[fd]
            )
        self._wait_healthy()


@dataclass
class DripReader:
    """GETs `path`, then takes what its 4 KiB receive buffer holds every `interval_s`.

    A few KiB each time, so every write of the server makes progress well inside a timeout
    per write: only a deadline on the whole answer ends the connection. `ended` is how the
    connection ended ("eof", "reset" or "held" when `cap_s` ran out first), its seconds from
    the request and the bytes taken.
    """

    port: int
    path: str
    interval_s: float = 0.1
    cap_s: float = 15.0
    ended: tuple[str, float, int] = ("", 0.0, 0)
    _thread: threading.Thread = field(init=False)

    def start(self) -> DripReader:
        self._thread = threading.Thread(target=self._run, name="drip-reader", daemon=True)
        self._thread.start()
        return self

    def join(self) -> tuple[str, float, int]:
        self._thread.join(self.cap_s + 10)
        return self.ended

    def _run(self) -> None:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
            sock.connect(("127.0.0.1", self.port))
            sock.sendall(f"GET {self.path} HTTP/1.1\r\nHost: drip\r\n\r\n".encode())
            sent, taken, how = time.monotonic(), 0, "held"
            sock.setblocking(False)
            while time.monotonic() - sent < self.cap_s:
                time.sleep(self.interval_s)
                try:
                    chunk = sock.recv(4096)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    how = "reset"
                    break
                if not chunk:
                    how = "eof"
                    break
                taken += len(chunk)
            self.ended = (how, time.monotonic() - sent, taken)


def test_drip_readers_are_cut_at_the_send_deadline_of_the_whole_answer(tmp_path: Path) -> None:
    """`--send-timeout-s` bounds the whole answer, not each write.

    gunicorn sends a file (here Swagger UI's 1.5 MB bundle) in many writes, and a JSON page
    in two (head, body). With a timeout per write, clients taking 40 KiB/s, a few KiB at a
    time, held their connections until they chose to leave (measured: still connected after
    the 15 s cap with a 1 s timeout, ~450 KB of the bundle taken); with one deadline per
    answer they are cut after 1 s, meanwhile other clients are served in full. The JSON page
    was cut in time before too (its body is one gevent `sendall`, timed as a whole); it is
    here so that it stays so.
    """
    wide_store(tmp_path / "wide.db", 2000)  # /api/v1/gpus?limit=2000 is ~1.6 MB
    config = GatewayConfig(store=f"sqlite:{tmp_path / 'wide.db'}", send_timeout_s=1.0)
    gateway = SmallSendBufferGateway(config, tmp_path / "gw.log", sndbuf=16 * 1024)
    bundle = (Path(swagger_ui_path) / "swagger-ui-bundle.js").read_bytes()
    paths = ["/swagger/swagger-ui-bundle.js", "/api/v1/gpus?limit=2000"] * 2
    try:
        drips = [DripReader(gateway.port, path).start() for path in paths]
        time.sleep(0.5)
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        conn.request("GET", "/swagger/swagger-ui-bundle.js")
        whole = conn.getresponse().read()  # a client that reads is served the whole file
        conn.close()
        assert whole == bundle
        latencies = []
        for _ in range(10):
            started = time.monotonic()
            assert gateway.get("/healthz")[0] == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.1)
        ended = [drip.join() for drip in drips]
        # Cut ~1 s after the answer started; the client then still drains what the kernel
        # buffers held (~40 KiB, 1 s at this rate). Scheduling slack on 2 shared cores.
        for (how, held_s, taken), path in zip(ended, paths, strict=True):
            assert how in ("eof", "reset"), (path, ended)
            assert held_s <= config.send_timeout_s + 5.0, (path, ended)
            assert taken < 300_000, (path, ended)
        assert max(latencies) < 1.0, latencies
        assert metric(gateway, "gpu_telemetry_gateway_slow_readers_total") >= len(drips)
        assert "did not take its answer within --send-timeout-s 1" in gateway.log_text()
    finally:
        gateway.stop()

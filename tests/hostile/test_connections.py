"""Connections that open no stream: closed after an idle timeout, capped, counted.

Idle TCP connections once had no bound at all: 20,100 connections that finished the HTTP/2
handshake and went quiet took the broker's 20,000 file descriptors, and health checks,
Publish and /metrics timed out for everyone.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
from grpc_health.v1.health_pb2 import HealthCheckRequest
from grpc_health.v1.health_pb2_grpc import HealthStub

from proto.gen import walbroker_pb2 as pb
from proto.gen import walbroker_pb2_grpc as pb_grpc
from tests.hostile.conftest import wait_metric
from tests.hostile.support import GoodClient, assert_unaffected, health_ok, scrape
from walbroker.errors import Code

OPEN = "gpu_telemetry_broker_open_connections"
AT_LIMIT = "gpu_telemetry_broker_connection_limit_seconds_total"
# The client's HTTP/2 preface, an empty SETTINGS frame and the ACK of the server's: a complete
# handshake, after which these connections say nothing.
HANDSHAKE = (
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    + bytes.fromhex("000000040000000000")
    + bytes.fromhex("000000040100000000")
)


def connect(address: str, n: int, handshake: bool = True) -> list[socket.socket]:
    host, port = address.rsplit(":", 1)
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=5)
        if handshake:
            s.sendall(HANDSHAKE)
        s.setblocking(False)
        socks.append(s)
    return socks


def is_closed(s: socket.socket) -> bool:
    """The broker closed this connection (whatever it sent first has been read)."""
    try:
        while True:
            if s.recv(65536) == b"":
                return True
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def open_count(socks: list[socket.socket]) -> int:
    return sum(not is_closed(s) for s in socks)


def wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not (ok := condition()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return ok


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def new_channel(address: str) -> grpc.Channel:
    """A channel with a connection of its own (channels of one process share them)."""
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


def publish_on(ch: grpc.Channel, request_id: int) -> pb.PublishAck:
    req = pb.PublishRequest(request_id=request_id, topic="good", payload=b"x" * 64, count=1)
    (ack,) = pb_grpc.BrokerStub(ch).Publish(iter([req]), timeout=10)
    return ack


def test_connections_without_a_call_are_closed_after_the_idle_timeout(hostile_broker):
    broker = hostile_broker("--connection-idle-timeout-s", "2", "--handshake-timeout-s", "2")
    assert broker.proc is not None
    good = GoodClient(broker.address)
    baseline = good.baseline(1.5)
    fds_before = fds(broker.proc.pid)
    with ExitStack() as stack:
        idle = connect(broker.address, 300)  # handshake done, no stream: the idle timeout
        silent = connect(broker.address, 100, handshake=False)  # no preface: the handshake's
        for s in idle + silent:
            stack.callback(s.close)
        assert wait_metric(broker.metrics_url, OPEN, 400, timeout_s=10) >= 400
        assert wait_for(lambda: fds(broker.proc.pid) >= fds_before + 400, 10), "not accepted"
        closed = wait_for(lambda: open_count(idle) + open_count(silent) == 0, 15)
        assert closed, f"{open_count(idle)} idle and {open_count(silent)} silent still open"
        # the broker let go of them too: descriptors and the gauge are back where they were
        assert wait_for(lambda: fds(broker.proc.pid) <= fds_before + 10, 5)
        assert wait_for(lambda: scrape(broker.metrics_url, OPEN) <= 10, 5)
    health_ok(broker.address)
    assert_unaffected(baseline, lambda: good.publish_for(1.5))
    good.assert_nothing_lost()


def test_connections_beyond_the_cap_are_closed_at_once_and_open_ones_keep_working(
    hostile_broker,
):
    broker = hostile_broker("--max-connections", "100")
    assert broker.proc is not None
    fds_before = fds(broker.proc.pid)
    with ExitStack() as stack:
        ch = stack.enter_context(grpc.insecure_channel(broker.address))  # connected before
        assert publish_on(ch, 1).status.code == Code.OK
        hostile = connect(broker.address, 300)
        for s in hostile:
            stack.callback(s.close)
        time.sleep(1.0)
        held = open_count(hostile)
        assert held <= 99, f"{held} connections kept beyond --max-connections 100"
        assert held >= 90, f"only {held}: the cap should have let the first 99 in"
        assert fds(broker.proc.pid) <= fds_before + 100 + 10
        # the connection opened before the flood is served as before
        for i in range(20):
            assert publish_on(ch, 2 + i).status.code == Code.OK
        # and the cap is visible: the gauge, seconds at the limit and a log line
        assert wait_metric(broker.metrics_url, OPEN, 100, timeout_s=10) >= 100
        assert wait_metric(broker.metrics_url, AT_LIMIT, 1.0, timeout_s=10) >= 1.0
        assert "connection limit reached" in broker.log_text()
        # a newcomer (its own connection, not the channel's above) is closed at once while
        # the cap is full: gRPC core says no more
        with pytest.raises(grpc.RpcError) as refused, new_channel(broker.address) as other:
            HealthStub(other).Check(HealthCheckRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    deadline = time.monotonic() + 10  # the hostile connections are gone: newcomers get in
    while True:
        try:
            health_ok(broker.address)
            break
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _serve_under_nofile(tmp: Path, soft: int, hard: int, *args: str) -> subprocess.Popen[str]:
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, "
        f"({soft}, {hard})); from walbroker.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    argv = [sys.executable, "-c", code, "serve", "--data-dir", str(tmp / "data")]
    argv += ["--listen", "127.0.0.1:0", "--metrics-listen", "", *args]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_the_connection_cap_must_fit_the_file_limit(tmp_path):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # A hard limit below the cap: a clear refusal at start, not EMFILE under load.
    proc = _serve_under_nofile(tmp_path, 1024, 2000, "--max-connections", "4096")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert "--max-connections 4096 needs 4608 open files" in out
    assert "at most 2000" in out
    # A soft limit below it (the common 1024) is raised within the hard one.
    if hard != resource.RLIM_INFINITY and hard < 4608:
        pytest.skip(f"this machine's hard file limit ({hard}) is below the default cap")
    proc = _serve_under_nofile(tmp_path, 1024, hard)
    try:
        deadline = time.monotonic() + 30
        soft = 0
        while time.monotonic() < deadline and proc.poll() is None:
            limits = Path(f"/proc/{proc.pid}/limits").read_text()
            line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
            soft = int(line.split()[3])
            if soft >= 4608:
                break
            time.sleep(0.2)
        assert soft >= 4608, (soft, proc.poll())
    finally:
        proc.terminate()
        proc.communicate(timeout=30)

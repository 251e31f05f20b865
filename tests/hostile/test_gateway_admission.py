"""--max-active against a real gunicorn gateway: a busy worker stops taking connections.

The gateway reads from an InfluxDB URL whose server accepts the query and never answers
(a stalled store, on loopback): a request there stays in the app until the store client's
deadline (10 s), with the worker's loop idle meanwhile, which is the case the bound is for.
With `--max-active 1`:
- one worker, the stalled request active: a new connection waits in the listen backlog
  until the stalled request stops counting (`WORK_GRACE_S`), not for the store's deadline;
- two workers: the worker that is not busy takes it at once;
- a client that sends half a request head holds no slot past `HEAD_GRACE_S`, and a request
  none once its answer starts.
The slow-client bounds themselves are `test_gateway_slowloris.py`'s; the effect on the
telemetry page's tail is a benchmark (`bench/fleet_bench.py`, docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import HEAD_GRACE_S, WORK_GRACE_S, GatewayConfig
from gateway.worker import _AnswerSocket
from tests.gateway.conftest import Gateway
from tests.hostile.test_gateway_slowloris import metric
from tests.store.test_http1 import Server

# A request the gateway answers without the store, well under a grace on an idle machine.
QUICK_S = 0.35


class StalledStore(Server):
    """A loopback HTTP server that reads requests and answers none until closed."""

    def __init__(self) -> None:
        self.asked = threading.Semaphore(0)  # released once per request received
        self._closing = threading.Event()
        super().__init__(self._stall)
        self.url = f"http://127.0.0.1:{self.port}"

    def _stall(self, request: bytes, n: int) -> tuple[bytes, bool]:
        self.asked.release()
        self._closing.wait()
        return b"", True  # the connection closes without an answer

    def close(self) -> None:
        """Stop listening and end every connection: requests waiting on them fail at once."""
        super().close()
        self._closing.set()


@pytest.fixture
def store() -> Iterator[StalledStore]:
    stalled = StalledStore()
    yield stalled
    stalled.close()


def gateway(store: StalledStore, tmp_path: Path, workers: int, max_active: int) -> Gateway:
    config = GatewayConfig(
        store="influx",
        influx_url=store.url,
        influx_org="gputel",
        influx_bucket="telemetry",
        influx_token="stalled-store-token",
        max_active=max_active,
        catalog_cache_s=0,
    )
    return Gateway(config, tmp_path / "gw.log", workers)


def stall_one(gw: Gateway, store: StalledStore) -> threading.Thread:
    """Start a request that waits on the stalled store; return once the store has it.

    The request entered the app before this returns (the store has its query).
    """

    def ask() -> None:
        with contextlib.suppress(OSError):  # the gateway may stop first
            gw.get("/api/v1/metrics")  # answered 5xx after the store client's deadline

    thread = threading.Thread(target=ask, name="stalled-request", daemon=True)
    thread.start()
    assert store.asked.acquire(timeout=10), "the gateway never asked the store"
    return thread


def healthz_s(gw: Gateway) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(gw.url + "/healthz", timeout=10) as resp:
        assert resp.status == 200
    return time.monotonic() - started


@pytest.mark.parametrize("max_active", [1, 0], ids=["bound_1", "no_bound"])
def test_a_worker_at_its_bound_takes_no_connection_until_a_request_stops_counting(
    store: StalledStore, tmp_path: Path, max_active: int
) -> None:
    gw = gateway(store, tmp_path, workers=1, max_active=max_active)
    try:
        assert healthz_s(gw) < QUICK_S
        sent = time.monotonic()
        stalled = stall_one(gw, store)
        waited = healthz_s(gw)
        if max_active:
            # Not accepted while the stalled request counted (its head arrived after `sent`);
            # accepted once it stopped, long before the store's 10-s deadline.
            assert WORK_GRACE_S <= time.monotonic() - sent <= WORK_GRACE_S + 1.5, waited
            assert metric(gw, "gpu_telemetry_gateway_accept_pauses_total") >= 1
        else:
            assert waited < QUICK_S
            assert metric(gw, "gpu_telemetry_gateway_accept_pauses_total") == 0
        time.sleep(WORK_GRACE_S)
        # The stalled request no longer counts (/metrics itself does), and still waits.
        assert metric(gw, "gpu_telemetry_gateway_active_connections") == 1
        assert stalled.is_alive()
    finally:
        store.close()  # the waiting request fails at once, and so would a retry
        gw.stop()


def test_the_worker_with_room_takes_the_connection(store: StalledStore, tmp_path: Path) -> None:
    gw = gateway(store, tmp_path, workers=2, max_active=1)
    try:
        stall_one(gw, store)
        # The busy worker stopped accepting: the other one takes every new connection.
        assert max(healthz_s(gw) for _ in range(5)) < QUICK_S
        assert metric(gw, "gpu_telemetry_gateway_accept_pauses_total") >= 1
    finally:
        store.close()  # the waiting request fails at once, and so would a retry
        gw.stop()


def test_half_a_request_head_holds_no_slot(store: StalledStore, tmp_path: Path) -> None:
    gw = gateway(store, tmp_path, workers=1, max_active=1)
    slow = socket.create_connection(("127.0.0.1", gw.port))
    try:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and no more
        time.sleep(HEAD_GRACE_S * 2)
        assert max(healthz_s(gw) for _ in range(5)) < QUICK_S
    finally:
        slow.close()
        gw.stop()


def test_a_request_stops_counting_when_its_answer_starts() -> None:
    """The worker hands `_AnswerSocket` its slot's release: called at the first send, once,
    so a client slow to take its answer holds no slot (`--send-timeout-s` bounds it)."""
    calls: list[str] = []
    left, right = socket.socketpair()
    with left, right:
        answer = _AnswerSocket(left, 5.0, lambda: calls.append("answer"))
        assert not calls  # made, not sent yet
        answer.sendall(b"HTTP/1.1 200 OK\r\n")
        assert calls == ["answer"]
        answer.send(b"\r\n")
        answer.sendall(b"body")
        assert calls == ["answer"]
        assert right.recv(64) == b"HTTP/1.1 200 OK\r\n\r\nbody"

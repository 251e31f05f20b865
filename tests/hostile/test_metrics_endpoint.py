"""Idle and slow clients of a /metrics endpoint: bounded threads and descriptors, scrapes served.

The broker, the streamer and the collector serve /metrics with one helper
(`gputel.probes.ProbeServer`): it is attacked here on a real broker process, and in
process with each component's own settings. Before the bound, every connection held a
thread of its own (prometheus_client's threading server): 2,000 idle connections made
2,000 threads in the broker and slowloris clients were never cut. Then, a client that
took its answer a few KiB at a time, just inside the timeout of each write, held an
answer thread for as long as it liked (`DripReader`).
"""

from __future__ import annotations

import gzip
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from gputel.probes import ANSWER_THREADS, ProbeServer
from tests.hostile.slowloris import SlowlorisProcess, probe
from tests.hostile.support import scrape
from tests.support import wait_until

IDLE = 2_000
MAX_CONNECTIONS = 64


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextmanager
def idle_connections(port: int, n: int) -> Iterator[list[socket.socket]]:
    """`n` TCP connections that never send a byte."""
    conns: list[socket.socket] = []
    try:
        for _ in range(n):
            conns.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        yield conns
    finally:
        for c in conns:
            c.close()


def test_thousands_of_idle_connections_take_no_threads_and_scrapes_go_on(hostile_broker):
    broker = hostile_broker()
    assert broker.proc is not None
    pid, port = broker.proc.pid, broker.metrics_port
    threads, fds = threads_of(pid), fds_of(pid)
    with idle_connections(port, IDLE):
        scrapes = probe("127.0.0.1", port, ["/metrics"], seconds=3.0, timeout_s=5.0)
        assert scrapes.success_ratio == 1.0, scrapes.summary()
        # Connections beyond the bound were closed, not kept with a thread each.
        assert threads_of(pid) <= threads + 8, (threads, threads_of(pid))
        assert fds_of(pid) <= fds + MAX_CONNECTIONS + 8, (fds, fds_of(pid))
    evicted = scrape(broker.metrics_url, "gpu_telemetry_broker_metrics_http_refused_total",
                     reason="evicted")  # fmt: skip
    assert evicted >= IDLE - MAX_CONNECTIONS


def test_slowloris_clients_are_cut_at_the_timeout_and_scrapes_go_on(hostile_broker):
    broker = hostile_broker("--metrics-timeout-s", "2")
    port = broker.metrics_port
    attack = SlowlorisProcess("127.0.0.1", port, connections=100, seconds=8, interval_s=0.5)
    attack.start()
    try:
        time.sleep(1.0)  # the attack is on
        scrapes = probe("127.0.0.1", port, ["/metrics"], seconds=4.0, timeout_s=5.0)
        slow = attack.result()
    finally:
        attack.kill()
    assert scrapes.success_ratio >= 0.95, scrapes.summary()
    # Every slow connection the server closed was closed within the timeout (or evicted).
    assert slow.closed_by_server > 100 and max(slow.held_s) < 2 + 3, max(slow.held_s)
    name = "gpu_telemetry_broker_metrics_http_refused_total"
    assert (
        scrape(broker.metrics_url, name, reason="timeout")
        + scrape(broker.metrics_url, name, reason="evicted")
        >= 100
    )


@pytest.mark.parametrize(
    "component", ["gpu_telemetry_streamer_metrics", "gpu_telemetry_collector_metrics"]
)
def test_every_component_endpoint_is_bounded(component):
    registry = CollectorRegistry()
    server = ProbeServer(
        "127.0.0.1:0", lambda: (True, {}), registry, f"{component}-test",
        metric_prefix=component, max_connections=8, timeout_s=1.0,
    ).start()  # fmt: skip
    refused = f"{component}_http_refused_total"
    try:
        threads = threads_of(os.getpid())
        with idle_connections(server.port, 200):
            assert probe("127.0.0.1", server.port, ["/metrics"], 1.0).success_ratio == 1.0
            assert threads_of(os.getpid()) <= threads + 4  # the answer threads, no more
            assert wait_until(
                lambda: registry.get_sample_value(refused, {"reason": "timeout"}),
                timeout_s=10,
            )
        # Each connection beyond the 8 slots was closed: evicted by a newer one, or, when
        # fewer than 8 newer ones came within its 1 s (a loaded machine), timed out.
        evicted = registry.get_sample_value(refused, {"reason": "evicted"}) or 0
        timed_out = registry.get_sample_value(refused, {"reason": "timeout"}) or 0
        assert evicted >= 100 and evicted + timed_out >= 200 - 8, (evicted, timed_out)
    finally:
        server.stop()


def test_metrics_are_gzipped_for_a_scraper_that_asks():
    """As prometheus_client's own server did for the broker (4.6 MiB at the group bound)."""
    registry = CollectorRegistry()
    Counter("scrapes_total", "a sample", registry=registry).inc()
    server = ProbeServer("127.0.0.1:0", lambda: (True, {}), registry).start()
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        asks = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(asks, timeout=10) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            assert b"scrapes_total 1.0" in gzip.decompress(resp.read())
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert b"scrapes_total 1.0" in resp.read()
    finally:
        server.stop()


# ---- clients that take their answer slowly ---------------------------------------------------

# A page that cannot sit in the socket buffers: the server has to write it as the client
# reads. 40 samples with 10 KB label values: 400 KB, made in milliseconds.
PAGE_SAMPLES, LABEL_BYTES = 40, 10_000
SERVER_SNDBUF = 8192  # the kernel doubles it: 16 KiB


@dataclass
class DripReader:
    """Asks for /metrics, then takes what its small receive buffer holds every `interval_s`.

    A few KiB each time: every write of the server makes progress well inside a timeout
    per write, so only a deadline on the whole answer ends the connection. Reconnects when
    the server closes it, while `reconnect` and not stopped. `held` has, for each connection
    the server ended, how it ended ("reset" or "eof") and its seconds from the request.
    """

    port: int
    interval_s: float
    reconnect: bool = True
    got_bytes: threading.Event = field(default_factory=threading.Event)  # the first answer
    held: list[tuple[str, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> DripReader:
        self._thread = threading.Thread(target=self._run, name="drip-reader", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._one()
            if not self.reconnect:
                return

    def _one(self) -> None:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
            sock.connect(("127.0.0.1", self.port))
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: drip\r\n\r\n")
            sent = time.monotonic()
            sock.setblocking(False)
            while not self._stop.wait(self.interval_s):
                try:
                    if sock.recv(65536) == b"":
                        self.held.append(("eof", time.monotonic() - sent))
                        return
                    self.got_bytes.set()
                except BlockingIOError:
                    pass
                except ConnectionResetError:
                    self.held.append(("reset", time.monotonic() - sent))
                    return


@contextmanager
def big_page_server(
    max_connections: int, timeout_s: float, max_held_bytes: int = 32 * 1024 * 1024
) -> Iterator[tuple[ProbeServer, CollectorRegistry]]:
    registry = CollectorRegistry()
    wide = Gauge("wide", "A page larger than the socket buffers.", ["blob"], registry=registry)
    for i in range(PAGE_SAMPLES):
        wide.labels(f"{i:03d}" + "x" * LABEL_BYTES).set(i)
    server = ProbeServer(
        "127.0.0.1:0", lambda: (True, {}), registry, "drip-test",
        metric_prefix="drip", max_connections=max_connections, timeout_s=timeout_s,
        max_held_bytes=max_held_bytes,
    )  # fmt: skip
    # Accepted sockets inherit the listener's send buffer. On loopback (a 64 KiB MSS) Linux
    # grows it to 4 MiB at once, and a writer blocked on a full one is woken only when a
    # third of it is free: a slow reader could never keep a write going. Over a network it
    # starts near 46 KiB, which is what a drip reader exploits; 16 KiB here does the same.
    server._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SERVER_SNDBUF)
    server.start()
    try:
        yield server, registry
    finally:
        server.stop()


def refused(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("drip_http_refused_total", {"reason": reason}) or 0.0


def timed_scrape(port: int, timeout_s: float) -> float:
    """Seconds a well-behaved scrape of the whole page took; infinity if it failed."""
    t0 = time.monotonic()
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            if len(resp.read()) < PAGE_SAMPLES * LABEL_BYTES:
                return float("inf")
    except OSError:  # refused (503), timed out, reset
        return float("inf")
    return time.monotonic() - t0


def test_slow_readers_are_cut_at_a_deadline_on_the_whole_answer_and_scrapes_go_on():
    timeout_s, drippers = 1.0, 2 * ANSWER_THREADS
    with big_page_server(max_connections=32, timeout_s=timeout_s) as (server, registry):
        attack = [DripReader(server.port, timeout_s / 2).start() for _ in range(drippers)]
        try:
            # The attack is on: drip readers are taking their answers (as many as there are
            # answer threads at least: before the deadline, the others waited behind them).
            assert wait_until(
                lambda: sum(d.got_bytes.is_set() for d in attack) >= ANSWER_THREADS, 5.0
            )
            # Scrape while every drip reader holds a connection, or reconnects at once.
            latencies = []
            end = time.monotonic() + 2.5 * timeout_s
            while time.monotonic() < end:
                latencies.append(timed_scrape(server.port, timeout_s=4 * timeout_s))
                time.sleep(0.1)  # pacing the scraper, not waiting for a result
            wait_until(lambda: all(d.held for d in attack), timeout_s=3 * timeout_s)
        finally:
            for d in attack:
                d.stop()
        held = [h for d in attack for h in d.held]
        seen = f"held {held}, scrapes {latencies}"
        # (a) The server ended every drip reader's connection, with a reset (what the client
        # had not taken is dropped), within the deadline plus slack: the loop's 0.25 s tick,
        # and the reader sees the reset a read or two later (its buffer is read first).
        # Measured: 2.0 s each. Before the deadline none had ended by the time they stopped.
        assert all(d.held for d in attack) and {how for how, _ in held} == {"reset"}, seen
        assert max(s for _, s in held) < timeout_s + 2.0, seen
        # (b) Each one counted.
        assert refused(registry, "timeout") >= len(held), seen
        # (c) No scrape waited for a drip reader: no answer thread is theirs to hold.
        assert len(latencies) >= 5 and max(latencies) < timeout_s, seen


def test_a_newcomer_evicts_the_slowest_reader_when_every_slot_is_taking_its_answer():
    slots = 4
    with big_page_server(max_connections=slots, timeout_s=30.0) as (server, registry):
        attack = [DripReader(server.port, 0.2, reconnect=False).start() for _ in range(slots)]
        try:
            assert all(d.got_bytes.wait(5) for d in attack)
            assert registry.get_sample_value("drip_http_connections") == slots
            # Far inside the 30 s deadline: only an eviction can make room, at once.
            latency = timed_scrape(server.port, timeout_s=5.0)
            assert latency < 1.0, (latency, refused(registry, "max_connections"))
            assert refused(registry, "evicted") == 1
            assert wait_until(lambda: any(d.held for d in attack), timeout_s=2.0)
            assert [how for d in attack for how, _ in d.held] == ["reset"]
        finally:
            for d in attack:
                d.stop()


def test_answers_held_for_slow_readers_stay_within_the_byte_budget():
    """Each held answer is a page; past the budget the one held longest goes, at once."""
    page = PAGE_SAMPLES * LABEL_BYTES
    with big_page_server(16, timeout_s=30.0, max_held_bytes=int(2.5 * page)) as (
        server,
        registry,
    ):
        attack = [DripReader(server.port, 0.2, reconnect=False).start() for _ in range(5)]
        try:
            # Far inside the 30 s deadline: only the budget can end a reader's connection.
            assert wait_until(lambda: refused(registry, "evicted") >= 3, timeout_s=5.0)
            assert wait_until(lambda: sum(bool(d.held) for d in attack) >= 3, timeout_s=3.0)
            assert {how for d in attack for how, _ in d.held} == {"reset"}
            assert registry.get_sample_value("drip_http_connections") <= 2
            assert timed_scrape(server.port, timeout_s=5.0) < 1.0
        finally:
            for d in attack:
                d.stop()

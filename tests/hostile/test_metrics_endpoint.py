"""Idle and slow clients of a /metrics endpoint: bounded threads and descriptors, scrapes served.

The broker, the streamer and the collector serve /metrics with one helper
(`gputel.probes.ProbeServer`): it is attacked here on a real broker process, and in
process with each component's own settings. Before the bound, every connection held a
thread of its own (prometheus_client's threading server): 2,000 idle connections made
2,000 threads in the broker and slowloris clients were never cut.
"""

from __future__ import annotations

import gzip
import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from prometheus_client import CollectorRegistry, Counter

from gputel.probes import ProbeServer
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
        evicted = registry.get_sample_value(refused, {"reason": "evicted"})
        assert evicted is not None and evicted >= 200 - 8
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

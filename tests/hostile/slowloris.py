"""Slow HTTP clients and a probe of well-behaved ones, for tests and `bench/gateway_slowloris.py`.

A slowloris client opens a connection, sends a request line and then one header line every
`interval_s`, never finishing the head; when the server closes it, it opens another at once
(as the attack tools do), until `seconds` have passed. The probe meanwhile sends ordinary GET
requests, one connection per request, a few at a time, and records each one's status and
latency; a request that fails or takes longer than its timeout counts as failed.
`SlowlorisProcess` runs the attack from a process of its own, so that its 50 threads do not
compete with the probe's for one interpreter lock (which would show as probe latency).
"""

from __future__ import annotations

import http.client
import multiprocessing as mp
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Slowloris:
    """`connections` slow clients against host:port for `seconds`; `stop()` ends them."""

    host: str
    port: int
    connections: int
    seconds: float
    interval_s: float = 1.0
    opened: int = 0  # connections opened over the run (reopens after the server closed one)
    closed_by_server: int = 0
    held_s: list[float] = field(default_factory=list)  # how long the server kept each one
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Slowloris:
        deadline = time.monotonic() + self.seconds
        for i in range(self.connections):
            t = threading.Thread(target=self._one, args=(i, deadline), name=f"slowloris-{i}")
            t.daemon = True
            t.start()
            self._threads.append(t)
        return self

    def _count(self, opened: int = 0, held_s: float | None = None) -> None:
        with self._lock:
            self.opened += opened
            if held_s is not None:
                self.closed_by_server += 1
                self.held_s.append(held_s)

    def _one(self, i: int, deadline: float) -> None:
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=5)
            except OSError:
                self._stop.wait(0.05)
                continue
            self._count(opened=1)
            t0 = time.monotonic()
            with sock:
                if self._trickle(sock, i, deadline):
                    self._count(held_s=time.monotonic() - t0)

    def _trickle(self, sock: socket.socket, i: int, deadline: float) -> bool:
        """Send a head slowly until the deadline; True when the server closed first."""
        try:
            sock.sendall(f"GET /api/v1/gpus?slow={i} HTTP/1.1\r\nHost: x\r\n".encode())
            n = 0
            while time.monotonic() < deadline:
                # Wait for the next header line's turn, noticing at once if the server closes.
                sock.settimeout(self.interval_s)
                try:
                    if sock.recv(4096) == b"":
                        return True
                except TimeoutError:
                    pass  # nothing from the server: still holding the connection
                if self._stop.is_set():
                    break
                sock.sendall(f"X-Slow-{n}: {'a' * 8}\r\n".encode())
                n += 1
        except OSError:
            return True
        return False

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


def _attack(
    host: str, port: int, connections: int, seconds: float, interval_s: float, out: Any
) -> None:
    attack = Slowloris(host, port, connections, seconds, interval_s).start()
    for t in attack._threads:
        t.join()
    out.put((attack.opened, attack.closed_by_server, attack.held_s))


class SlowlorisProcess:
    """`Slowloris` in a child process; `result()` waits for its end and returns its figures."""

    def __init__(
        self, host: str, port: int, connections: int, seconds: float, interval_s: float = 1.0
    ) -> None:
        ctx = mp.get_context("spawn")
        self.seconds = seconds
        self._out = ctx.Queue()
        args = (host, port, connections, seconds, interval_s, self._out)
        self._proc = ctx.Process(target=_attack, args=args, name="slowloris", daemon=True)

    def start(self) -> SlowlorisProcess:
        self._proc.start()
        return self

    def result(self) -> Slowloris:
        """The finished attack's counts (opened, closed_by_server, held_s)."""
        opened, closed, held = self._out.get(timeout=self.seconds + 60)
        self._proc.join(10)
        done = Slowloris("", 0, 0, 0.0)
        done.opened, done.closed_by_server, done.held_s = opened, closed, held
        return done

    def kill(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(10)


@dataclass
class ProbeResult:
    """Statuses and latencies of the probe's requests."""

    latencies_s: list[float]
    failures: list[str]

    @property
    def total(self) -> int:
        return len(self.latencies_s) + len(self.failures)

    @property
    def success_ratio(self) -> float:
        return len(self.latencies_s) / self.total if self.total else 0.0

    def quantile_ms(self, q: float) -> float:
        lat = sorted(self.latencies_s)
        if not lat:
            return float("inf")
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000

    def summary(self) -> dict[str, float | int]:
        return {
            "requests": self.total,
            "failed": len(self.failures),
            "success_ratio": round(self.success_ratio, 4),
            "p50_ms": round(self.quantile_ms(0.5), 2),
            "p99_ms": round(self.quantile_ms(0.99), 2),
            "max_ms": round(self.quantile_ms(1.0), 2),
        }


def probe(
    host: str,
    port: int,
    paths: list[str],
    seconds: float,
    clients: int = 2,
    pause_s: float = 0.02,
    timeout_s: float = 2.0,
) -> ProbeResult:
    """Well-behaved clients: `clients` threads, GET path after path, a connection per request."""
    lat: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def loop(k: int) -> None:
        n = k
        while time.monotonic() < deadline:
            path = paths[n % len(paths)]
            n += clients
            t0 = time.perf_counter()
            try:
                conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                conn.close()
                ok, why = resp.status == 200, f"status {resp.status}"
            except OSError as exc:
                ok, why = False, f"{type(exc).__name__}: {exc}"
            took = time.perf_counter() - t0
            with lock:
                if ok:
                    lat.append(took)
                else:
                    failures.append(why)
            time.sleep(pause_s)

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ProbeResult(lat, failures)

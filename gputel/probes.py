"""One small HTTP server per process for `/healthz`, `/readyz` and Prometheus `/metrics`.

`/healthz` answers 200 while the process runs. `/readyz` answers 200 while the
process's readiness check says so, else 503, with the check's details as JSON.
`/metrics` is served when a registry is given. The broker, the streamer and the
collector use it; it is started and stopped explicitly.

Bounded (docs/limits.md), whatever clients do:

- One named thread accepts connections and reads request heads for all of them
  (a selector), so an idle or slow (slowloris) connection holds a file descriptor,
  never a thread; a head is read as soon as it is complete, whoever else is connected.
- At most `max_connections` are open at once. A newcomer past it closes the oldest
  connection still sending its head (scrapers send theirs at once, so thousands of
  idle connections cannot keep them out); when every open one is being answered, the
  newcomer gets a 503 instead.
- A connection has `timeout_s` to send its head and `timeout_s` again to take its
  answer; heads are at most 64 KiB.
- Answers are made by `ANSWER_THREADS` threads.

Each closed-unanswered connection is counted in `<prefix>_http_refused_total{reason}`
(`evicted`, `max_connections`, `timeout`, `too_large`); `<prefix>_http_connections`
is the gauge of open ones.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import selectors
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

log = logging.getLogger(__name__)

# Returns (ready, details shown in the /readyz body).
Readiness = Callable[[], tuple[bool, dict[str, Any]]]
MAX_CONNECTIONS = 64
TIMEOUT_S = 10.0
ANSWER_THREADS = 4
ACCEPT_BATCH = 8
MAX_HEAD_BYTES = 64 * 1024
_BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_WARN_EVERY_S = 60.0


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of `HOST:PORT`; an empty host means every interface."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not a HOST:PORT address: {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class _Meters:
    """The endpoint's own metrics, in the registry it serves (a private one without)."""

    def __init__(self, registry: CollectorRegistry | None, prefix: str, listen: str) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.open = Gauge(f"{prefix}_http_connections", "Open connections to /metrics.", registry=r)
        self.refused = Counter(
            f"{prefix}_http_refused",
            "Connections to /metrics closed unanswered: evicted (its head was not in when a "
            "newcomer needed the slot), max_connections (every slot was answering), timeout, "
            "too_large.",
            ["reason"],
            registry=r,
        )
        self.listen = listen
        self._warned = 0.0

    def refuse(self, reason: str) -> None:
        self.refused.labels(reason).inc()
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY_S:  # one line a minute, not one a connection
            self._warned = now
            log.warning("http connection refused", extra={"reason": reason, "listen": self.listen})


class _Head:
    """A connection whose request head is still coming in."""

    __slots__ = ("address", "data", "deadline")

    def __init__(self, address: Any, deadline: float) -> None:
        self.address, self.deadline, self.data = address, deadline, b""


class ProbeServer:
    """Serves the probes, and /metrics when given a registry, on one HOST:PORT.

    Threads: the accept-and-read loop (named `name`) owns the selector and `_heads`;
    `_lock` guards `_answering`, which the answer threads decrement.
    """

    def __init__(
        self,
        listen: str,
        readiness: Readiness,
        registry: CollectorRegistry | None = None,
        name: str = "probes-http",
        *,
        metric_prefix: str = "gpu_telemetry_probes",
        max_connections: int = MAX_CONNECTIONS,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.listen, self.name = listen, name
        self.max_connections, self.timeout_s = max_connections, timeout_s
        self.meters = _Meters(registry, metric_prefix, listen)
        self._handler = _handler(readiness, registry, self.meters)
        host, port = split_address(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, port), family=family, backlog=128)
        self._sock.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ)
        self._heads: OrderedDict[socket.socket, _Head] = OrderedDict()  # oldest first
        self._lock = threading.Lock()
        self._answering = 0
        self._pool = ThreadPoolExecutor(ANSWER_THREADS, thread_name_prefix=f"{name}-answer")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when listening on port 0)."""
        return int(self._sock.getsockname()[1])

    def start(self) -> ProbeServer:
        """Start serving in the server's named thread."""
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        log.info("loop started", extra={"loop": self.name, "listen": self.listen})
        return self

    def stop(self) -> None:
        """Stop serving and close every socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            log.info("loop stopped", extra={"loop": self.name, "listen": self.listen})
        self._pool.shutdown(wait=False, cancel_futures=True)
        for conn in list(self._heads):
            self._close(conn)
        self._selector.close()
        self._sock.close()

    # ---- the accept-and-read loop ---------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for key, _ in self._selector.select(timeout=0.25):
                    if key.fileobj is self._sock:
                        self._accept()
                    else:
                        self._read(key.fileobj)  # type: ignore[arg-type]
                self._expire()
            except Exception:  # the endpoint must not go silent; the next round goes on
                log.exception("loop error", extra={"loop": self.name})

    def _accept(self) -> None:
        # A few at a time, then the heads that came in: under a storm of connections a
        # scraper's head is read before 64 newer ones can push its connection out.
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of file descriptors, say: the backlog keeps it for later
                log.warning("accept failed", exc_info=True, extra={"listen": self.listen})
                return
            if not self._make_room():
                self.meters.refuse("max_connections")
                with contextlib.suppress(OSError):
                    conn.setblocking(False)
                    conn.send(_BUSY)
                conn.close()
                continue
            conn.setblocking(False)
            self._heads[conn] = _Head(address, time.monotonic() + self.timeout_s)
            self._selector.register(conn, selectors.EVENT_READ)
            self._gauge()
            self._read(conn)  # a scraper's head is usually there already

    def _make_room(self) -> bool:
        """True when a newcomer may stay: under the bound, or the oldest head-less one left."""
        with self._lock:
            answering = self._answering
        if len(self._heads) + answering < self.max_connections:
            return True
        if not self._heads:
            return False
        self.meters.refuse("evicted")
        self._close(next(iter(self._heads)))
        return True

    def _read(self, conn: socket.socket) -> None:
        head = self._heads.get(conn)
        if head is None:  # evicted by an accept of the same round
            return
        try:
            chunk = conn.recv(MAX_HEAD_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close(conn)
            return
        head.data += chunk
        if b"\r\n\r\n" in head.data or b"\n\n" in head.data:
            self._answer(conn, head)
        elif len(head.data) > MAX_HEAD_BYTES:
            self.meters.refuse("too_large")
            self._close(conn)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._heads:
            conn, head = next(iter(self._heads.items()))
            if head.deadline > now:
                return  # deadlines come in accept order
            self.meters.refuse("timeout")
            self._close(conn)

    def _close(self, conn: socket.socket) -> None:
        self._heads.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        conn.close()
        self._gauge()

    def _gauge(self) -> None:
        with self._lock:
            self.meters.open.set(len(self._heads) + self._answering)

    # ---- answers ----------------------------------------------------------------------------

    def _answer(self, conn: socket.socket, head: _Head) -> None:
        del self._heads[conn]
        self._selector.unregister(conn)
        with self._lock:
            self._answering += 1
        try:
            self._pool.submit(self._respond, conn, head)
        except RuntimeError:  # stopping
            self._answered(conn)

    def _respond(self, conn: socket.socket, head: _Head) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(self.timeout_s)  # to take the whole answer
            self._handler(conn, head.address, head.data)
        except ConnectionError:
            log.debug("probe client went away", extra={"client": str(head.address)})
        except Exception:  # one request's failure is logged, the endpoint goes on
            log.warning("probe request failed", exc_info=True, extra={"client": str(head.address)})
        finally:
            self._answered(conn)

    def _answered(self, conn: socket.socket) -> None:
        conn.close()
        with self._lock:
            self._answering -= 1
        self._gauge()


def _handler(
    readiness: Readiness, registry: CollectorRegistry | None, meters: _Meters
) -> Callable[[socket.socket, Any, bytes], None]:
    class Handler(BaseHTTPRequestHandler):
        head = b""

        def setup(self) -> None:
            self.connection = self.request
            self.rfile = io.BytesIO(self.head)  # the loop has read it already
            self.wfile = self.connection.makefile("wb")  # closed by finish()

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send(200, "application/json", b'{"status":"ok"}')
            elif path == "/readyz":
                ready, detail = readiness()
                body = json.dumps({"ready": ready, **detail}).encode()
                self._send(200 if ready else 503, "application/json", body)
            elif path == "/metrics" and registry is not None:
                body = generate_latest(registry)
                # As prometheus_client's own server does: Prometheus asks for gzip.
                zipped = "gzip" in self.headers.get("Accept-Encoding", "")
                body = gzip.compress(body) if zipped else body
                self._send(200, CONTENT_TYPE_LATEST, body, zipped)
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, status: int, content_type: str, body: bytes, zipped: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            if zipped:
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            try:
                self.end_headers()
                self.wfile.write(body)
            except TimeoutError:  # the client does not take the answer
                meters.refuse("timeout")
                raise

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every few seconds would flood the structured log

    def handle(conn: socket.socket, address: Any, head: bytes) -> None:
        handler = type("BoundHandler", (Handler,), {"head": head})
        handler(conn, address, None)  # type: ignore[arg-type]

    return handle

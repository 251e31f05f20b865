"""One small HTTP server per process for `/healthz`, `/readyz` and Prometheus `/metrics`.

`/healthz` answers 200 while the process runs. `/readyz` answers 200 while the
process's readiness check says so, else 503, with the check's details as JSON.
`/metrics` is served when a registry is given. The broker, the streamer and the
collector use it; it is started and stopped explicitly.

Bounded (docs/limits.md), whatever clients do:

- One named thread accepts connections, reads request heads and sends answers for all
  of them (a selector), so an idle or slow (slowloris) connection, or one that reads its
  answer slowly, holds a file descriptor, never a thread; a head is read as soon as it
  is complete, whoever else is connected.
- Answers are made by `ANSWER_THREADS` threads, which never wait on a client: they hand
  the socket what it takes at once, and the loop sends the rest as the client reads. A
  slow reader therefore holds a slot and its answer's bytes, not an answer thread that
  scrapes would queue behind. At most `max_connections` answers, and `max_held_bytes`
  (32 MiB) of them in all, are held at once: past the byte budget, the answer held
  longest (the slowest reader's) is dropped with a reset and counted as `evicted`.
- A connection has `timeout_s` to send its head (at most 64 KiB) and `timeout_s` again
  to take its whole answer, status line and headers included: a deadline set when the
  answer is made, not a timeout per write. (It was one per write: a client reading a
  few KiB before each ran out held an answer thread, and its slot, for as long as it
  liked.) Past either the connection is closed, an unsent answer with a reset. "Taken"
  means taken by the kernel: a closed socket's send buffer is the kernel's to deliver.
  The answer's bound reuses `timeout_s` rather than a flag of its own: a scraper takes
  a page within milliseconds, the largest page (the broker at its group bound, 4.6 MiB,
  a tenth of that gzipped as Prometheus asks) needs under 0.5 MB/s to make it in the
  default 10 s, and an answer later than Prometheus' own default scrape timeout (10 s)
  is of no use to it anyway.
- At most `max_connections` are open at once. A newcomer past it closes the oldest
  connection still sending its head (scrapers send theirs at once, so thousands of
  idle connections cannot keep them out), else the one that has been taking its answer
  the longest (scrapers take theirs at once, so slow readers cannot keep them out
  either); when every open one is having its answer made, the newcomer gets a 503.

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
import struct
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from typing import Any, cast

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
# Bytes of answers held for slow readers at once; past it the one held longest is evicted.
MAX_HELD_BYTES = 32 * 1024 * 1024
ACCEPT_BATCH = 8
MAX_HEAD_BYTES = 64 * 1024
_BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_WARN_EVERY_S = 60.0
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() drops what is unsent, sends RST


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
            "Connections to /metrics closed unanswered: evicted (its head was not in, or it "
            "was the slowest to take its answer, when a newcomer needed the slot), "
            "max_connections (every slot was having its answer made), timeout (its head, or "
            "its whole answer, not in time), too_large.",
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


class _Sending:
    """A connection whose answer the client is still taking: what is left, and by when."""

    __slots__ = ("address", "data", "deadline")

    def __init__(self, address: Any, data: memoryview, deadline: float) -> None:
        self.address, self.data, self.deadline = address, data, deadline


class ProbeServer:
    """Serves the probes, and /metrics when given a registry, on one HOST:PORT.

    A connection goes head (`_heads`) -> made by an answer thread (`_making`, a count)
    -> sent (`_sending`), unless the answer thread's first write took it all.
    Threads: the accept-read-and-send loop (named `name`) owns the selector, `_heads` and
    `_sending`; `_lock` guards `_making`; answer threads hand unfinished answers to the
    loop through `_made` and a byte on `_wake`.
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
        max_held_bytes: int = MAX_HELD_BYTES,
    ) -> None:
        self.listen, self.name = listen, name
        self.max_connections, self.timeout_s = max_connections, timeout_s
        self.max_held_bytes = max_held_bytes
        self.meters = _Meters(registry, metric_prefix, listen)
        self._handler = _handler(readiness, registry)
        host, port = split_address(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, port), family=family, backlog=128)
        self._sock.setblocking(False)
        self._woken, self._wake = socket.socketpair()
        self._woken.setblocking(False)
        self._wake.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ)
        self._selector.register(self._woken, selectors.EVENT_READ)
        self._heads: OrderedDict[socket.socket, _Head] = OrderedDict()  # oldest first
        self._sending: OrderedDict[socket.socket, _Sending] = OrderedDict()  # oldest first
        self._made: deque[tuple[socket.socket, _Sending]] = deque()
        self._lock = threading.Lock()
        self._making = 0
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
        for conn in [*self._heads, *self._sending]:
            self._close(conn)
        self._take_made()  # closes them: stopping
        self._selector.close()
        self._sock.close()
        self._woken.close()
        self._wake.close()

    # ---- the accept-read-and-send loop ------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for key, _ in self._selector.select(timeout=0.25):
                    conn = cast(socket.socket, key.fileobj)
                    if conn is self._sock:
                        self._accept()
                    elif conn is self._woken:
                        self._take_made()
                    elif conn in self._sending:
                        self._write(conn)
                    else:
                        self._read(conn)
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
        """True when a newcomer may stay: under the bound, or the oldest head-less one left,
        or else the one taking its answer the longest."""
        with self._lock:
            making = self._making
        if len(self._heads) + making + len(self._sending) < self.max_connections:
            return True
        oldest = next(iter(self._heads or self._sending), None)
        if oldest is None:
            return False  # every one is having its answer made
        self.meters.refuse("evicted")
        self._close(oldest, reset=oldest in self._sending)
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

    def _take_made(self) -> None:
        """Answers the answer threads could not send whole: the loop sends the rest."""
        with contextlib.suppress(OSError):
            self._woken.recv(4096)
        while self._made:
            conn, sending = self._made.popleft()
            with self._lock:
                self._making -= 1
            if self._stop.is_set():
                conn.close()
                continue
            self._sending[conn] = sending
            self._selector.register(conn, selectors.EVENT_WRITE)
        held = sum(len(s.data) for s in self._sending.values())  # at most max_connections
        while held > self.max_held_bytes and len(self._sending) > 1:
            oldest, sending = next(iter(self._sending.items()))  # the slowest reader
            held -= len(sending.data)
            self.meters.refuse("evicted")
            self._close(oldest, reset=True)
        self._gauge()

    def _write(self, conn: socket.socket) -> None:
        sending = self._sending.get(conn)
        if sending is None:  # evicted by an accept of the same round
            return
        try:
            sending.data = sending.data[conn.send(sending.data) :]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            log.debug("probe client went away", extra={"client": str(sending.address)})
            self._close(conn)
            return
        if not sending.data:
            self._close(conn)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._heads:
            conn, head = next(iter(self._heads.items()))
            if head.deadline > now:
                break  # deadlines come in accept order
            self.meters.refuse("timeout")
            self._close(conn)
        # Nearly in deadline order (several answer threads hand them over); a few dozen.
        for conn in [c for c, s in self._sending.items() if s.deadline <= now]:
            self.meters.refuse("timeout")
            self._close(conn, reset=True)

    def _close(self, conn: socket.socket, reset: bool = False) -> None:
        self._heads.pop(conn, None)
        self._sending.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        if reset:  # an answer not taken in time: the kernel must not go on sending it
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        conn.close()
        self._gauge()

    def _gauge(self) -> None:
        with self._lock:
            self.meters.open.set(len(self._heads) + self._making + len(self._sending))

    # ---- answers ----------------------------------------------------------------------------

    def _answer(self, conn: socket.socket, head: _Head) -> None:
        del self._heads[conn]
        self._selector.unregister(conn)
        with self._lock:
            self._making += 1
        try:
            self._pool.submit(self._respond, conn, head)
        except RuntimeError:  # stopping
            self._answered(conn)

    def _respond(self, conn: socket.socket, head: _Head) -> None:
        """In an answer thread: make the answer, give the socket what it takes at once (all
        of it, for a scraper), and hand the rest to the loop; never wait on the client."""
        try:
            answer = memoryview(self._handler(head.address, head.data))
        except Exception:  # one request's failure is logged, the endpoint goes on
            log.warning("probe request failed", exc_info=True, extra={"client": str(head.address)})
            self._answered(conn)
            return
        deadline = time.monotonic() + self.timeout_s  # to take the whole answer
        try:
            while answer:  # the socket is non-blocking
                answer = answer[conn.send(answer) :]
        except (BlockingIOError, InterruptedError):
            if not self._stop.is_set():
                self._made.append((conn, _Sending(head.address, answer, deadline)))
                with contextlib.suppress(OSError):  # full: the loop is being woken anyway
                    self._wake.send(b"\0")
                return
        except OSError:
            log.debug("probe client went away", extra={"client": str(head.address)})
        self._answered(conn)

    def _answered(self, conn: socket.socket) -> None:
        conn.close()
        with self._lock:
            self._making -= 1
        self._gauge()


def _handler(
    readiness: Readiness, registry: CollectorRegistry | None
) -> Callable[[Any, bytes], bytes]:
    class Handler(BaseHTTPRequestHandler):
        head = b""

        def setup(self) -> None:
            self.rfile = io.BytesIO(self.head)  # the loop has read it already
            self.wfile = io.BytesIO()  # the whole answer, sent by the server

        def finish(self) -> None:
            pass  # nothing to flush or close: both are in memory, `handle` takes wfile's

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
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every few seconds would flood the structured log

    def handle(address: Any, head: bytes) -> bytes:
        """The whole answer (status line, headers, body) to the request head `head`."""
        handler = type("BoundHandler", (Handler,), {"head": head})
        answered = handler(None, address, None)  # type: ignore[arg-type]
        return cast(io.BytesIO, answered.wfile).getvalue()

    return handle

"""The gateway's gunicorn worker: gevent, one request per connection, a deadline on each head.

Why gevent (measured, see gateway/README.md): gunicorn's sync worker reads a request head
with the whole worker and its gthread worker with a thread, so a client that trickles its
headers holds one of them for as long as it likes (2 such clients stopped `make run`'s
gateway, 8 the chart's 2 x 4). Here each connection is a greenlet waiting on its socket:
a slow client costs a few KiB, not a worker. Bounds, each with a flag and a metric:

- `--head-timeout-s`: a connection that has not sent a whole request head by then is closed
  (`gpu_telemetry_gateway_slow_clients_total`); with TLS, the handshake counts as part of the
  head (gevent would otherwise complete it before the handler, with no deadline).
  gunicorn's async worker times the head read with `timeout_ctx()` on its keep-alive
  path, so `gunicorn_conf` turns keep-alive on and
  its `pre_request` hook closes each connection after its answer (as the sync worker did): a
  worker takes a new connection only when its loop is free, so load spreads over workers.
- `--send-timeout-s`: a connection whose client has not taken its whole answer by then is
  closed (`gpu_telemetry_gateway_slow_readers_total`): one deadline per answer, set when
  its first byte is sent, status line and headers included (`_AnswerSocket`), not a
  timeout per write. gunicorn writes an answer in several calls (a file, such as a Swagger
  UI asset, in 8 KiB sends), and the socket's timeout bounded each afresh: clients taking a
  few KiB before each ran out held their connections for as long as they liked (measured
  with `--send-timeout-s 1`: still connected after 15 s). Without any bound, 20 clients
  asking for a 10 MB page and never reading it held every slot of a `--max-connections 20`
  worker (even `/healthz` timed out). "Taken" means taken by the kernel: the client still
  gets what the socket buffers held when the connection was closed. The request head is
  bounded first by its own deadline. gunicorn's gthread and sync workers do not apply it
  (`--worker-class`: only behind a buffering proxy).
- `--max-connections`: open connections per worker (gunicorn's `worker_connections`); past
  it the worker stops accepting and newcomers wait in the listen backlog
  (`gpu_telemetry_gateway_connections` counts the open ones).
- `--max-active`: connections a worker is *working on* (`_Admission`); at the bound it stops
  accepting until one is done, so newcomers wait in the listen backlog that all workers share
  and the first worker with room takes them. Without it, each worker took every connection
  it could: waiting on InfluxDB, a worker's loop is idle, so one of two workers held 13 of 16
  connections and its requests queued for its one CPU while the other worker idled (measured
  on InfluxDB, 16 connections: the telemetry page's p99 11-22 % lower, p99/p50 1.8-1.9
  against 2.3-2.5; docs/benchmarks.md). A connection
  counts from its accept until its answer is ready (the first byte is sent), but a request
  head still incomplete after `HEAD_GRACE_S` or a request still in the app after
  `WORK_GRACE_S` stops counting: slow clients and slow store reads never keep a worker from
  taking connections, and `/healthz` waits at most about `WORK_GRACE_S` in the backlog.
  `gpu_telemetry_gateway_active_connections` counts them,
  `gpu_telemetry_gateway_accept_pauses_total` the times a worker stopped accepting.

A request gunicorn itself refuses before the app sees it (a request line over
`limit_request_line`, too many or too large header fields, a malformed head) is answered
as problem+json too (`write_problem`, installed over gunicorn's HTML page in each worker),
so clients get the API's one error format for every 4xx.

The store calls block the worker's loop (SQLite is CPU work; sockets are cooperative under
gevent's monkey-patching, so InfluxDB queries overlap). Metrics are made in the worker
process after gunicorn set PROMETHEUS_MULTIPROC_DIR, never in the arbiter.
"""

from __future__ import annotations

import json
import socket as _socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

import gevent
from gevent import monkey, socket
from gevent.server import StreamServer
from gunicorn import util
from gunicorn.workers import ggevent
from gunicorn.workers.ggevent import GeventWorker

from gateway.config import HEAD_GRACE_S, WORK_GRACE_S, from_env
from gateway.errors import PROBLEM_JSON

PREFIX = "gpu_telemetry_gateway"


class _WorkerMetrics:
    """The worker's connection metrics, made in `init_process` (prometheus_client is in
    multiprocess mode by then)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge

        self.slow = Counter(
            f"{PREFIX}_slow_clients",
            "Connections closed because their request head did not arrive in time.",
        )
        self.slow_readers = Counter(
            f"{PREFIX}_slow_readers",
            "Connections closed because their client did not take its answer in time.",
        )
        self.connections = Gauge(
            f"{PREFIX}_connections",
            "Open client connections (bound: --max-connections per worker).",
            multiprocess_mode="livesum",
        )
        self.active = Gauge(
            f"{PREFIX}_active_connections",
            "Connections being read or worked on (bound: --max-active per worker).",
            multiprocess_mode="livesum",
        )
        self.pauses = Counter(
            f"{PREFIX}_accept_pauses",
            "Times a worker stopped taking connections, --max-active of its own being active.",
        )


def write_problem(sock: Any, status: int, reason: str, message: str) -> None:
    """gunicorn's `util.write_error` with an RFC 9457 body instead of an HTML page."""
    body = json.dumps(
        {
            "type": "about:blank",
            "title": reason,
            "status": status,
            "detail": message,
            "instance": "",
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: {PROBLEM_JSON}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


class GatewayWorker(GeventWorker):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's gevent worker with a head deadline, an admission bound and connection metrics."""

    def patch(self) -> None:
        """gevent's monkey-patching, but threads stay OS threads.

        With `threading` patched, `threading.local` is per greenlet, i.e. per connection
        here, and the SQLite store (one connection per thread) opened a connection, two file
        descriptors, per request and kept them all (measured: 616 open files after 300
        requests). Nothing in the gateway needs cooperative locks: they guard memory only
        and are never held across I/O. Sockets, ssl, select and sleep are cooperative.
        """
        monkey.patch_all(thread=False)
        # As gunicorn's GeventWorker.patch: listeners become gevent sockets.
        listeners: list[Any] = self.sockets  # type: ignore[has-type]
        self.sockets = [
            socket.socket(s.FAMILY, _socket.SOCK_STREAM, fileno=s.sock.detach()) for s in listeners
        ]

    def init_process(self) -> None:
        config = from_env()
        self.head_timeout_s = config.head_timeout_s
        self.send_timeout_s = config.send_timeout_s
        self.metrics = _WorkerMetrics()
        self.admission = _Admission(config.max_active, self.metrics)
        self.slots: dict[int, _Slot] = {}  # by id() of the client socket, while it is handled
        util.write_error = write_problem  # gunicorn's handle_error calls it through `util`
        super().init_process()

    def run(self) -> None:
        """gunicorn's, with `_Server`s the admission can pause: gunicorn's run builds one
        server per listener by its module's name `StreamServer`, rebound here (as
        `util.write_error` is in `init_process`)."""
        admission = self.admission

        def server(*args: Any, **kwargs: Any) -> _Server:
            return _Server(admission, *args, **kwargs)

        ggevent.StreamServer = server
        super().run()

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        self.metrics.connections.inc()
        slot = self.slots[id(client)] = _Slot(self.admission, HEAD_GRACE_S)
        try:
            if isinstance(client, ssl.SSLSocket) and not self._handshake(client):
                return  # the server closes the socket after this returns
            super().handle(listener, client, addr)
        finally:
            slot.release()
            del self.slots[id(client)]
            self.metrics.connections.dec()

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        """gunicorn's, but an answer the client does not take in time closes the connection
        quietly and is counted (gunicorn logged each as a socket error with a traceback).
        The request counts towards --max-active until its answer starts (`_AnswerSocket`)."""
        slot = self.slots[id(sock)]
        slot.hold(WORK_GRACE_S)
        sock.settimeout(self.send_timeout_s)  # gunicorn made it blocking; the head is read
        try:
            return super().handle_request(
                listener_name, req, _AnswerSocket(sock, self.send_timeout_s, slot.release), addr
            )
        except TimeoutError:
            self.metrics.slow_readers.inc()
            self.log.info(
                "client %s did not take its answer within --send-timeout-s %g; connection closed",
                addr[0] if isinstance(addr, tuple) else addr,
                self.send_timeout_s,
            )
            raise StopIteration("answer not taken in time") from None  # ends the connection

    def _handshake(self, client: Any) -> bool:
        """The TLS handshake is part of the request head: same deadline (see gunicorn_conf)."""
        client.setblocking(1)
        try:
            with self._head_deadline() as deadline:
                client.do_handshake()
        except (ssl.SSLError, OSError) as exc:  # not TLS, or gone: nothing to answer
            self.log.debug("TLS handshake failed: %s", exc)
            return False
        return not deadline.expired

    def timeout_ctx(self) -> Any:
        return self._head_deadline()

    @contextmanager
    def _head_deadline(self) -> Iterator[_Deadline]:
        """Give up on a request head after `head_timeout_s`; the caller then closes."""
        deadline = _Deadline()
        timer = gevent.Timeout(self.head_timeout_s)
        timer.start()
        try:
            yield deadline
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            deadline.expired = True
            self.metrics.slow.inc()
            self.log.debug("request head not complete in time; connection closed")
        finally:
            timer.close()


class _Deadline:
    """Whether a head deadline expired (set by `GatewayWorker._head_deadline`)."""

    expired = False


class _Admission:
    """A worker's active connections; at `bound` (0: none) its servers stop accepting.

    Used only by the worker's gevent loop and its greenlets (one OS thread): no lock.
    """

    def __init__(self, bound: int, metrics: _WorkerMetrics) -> None:
        self.bound = bound
        self.active = 0
        self.servers: list[_Server] = []  # each registers itself
        self._metrics = metrics

    @property
    def paused(self) -> bool:
        return 0 < self.bound <= self.active

    def enter(self) -> None:
        self.active += 1
        self._metrics.active.inc()
        if self.active == self.bound:  # just reached it
            self._metrics.pauses.inc()
            for server in self.servers:
                server.stop_accepting()

    def leave(self) -> None:
        self.active -= 1
        self._metrics.active.dec()
        if self.active == self.bound - 1:  # just left it
            for server in self.servers:
                if server.started:  # not once gunicorn closed it to stop the worker
                    server.start_accepting()


class _Server(StreamServer):  # type: ignore[misc]  # gevent is untyped
    """gevent's server, accepting only while the worker's admission allows.

    One connection per accept (gunicorn sets it so with several workers): the new
    connection's greenlet starts, and counts, before the server accepts the next one.
    gevent restarts accepting by itself too (a pool slot freed, an accept error's back-off):
    `start_accepting` does nothing while the admission holds it paused.
    """

    def __init__(self, admission: _Admission, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_accept = 1
        self._admission = admission
        admission.servers.append(self)

    def start_accepting(self) -> None:
        if not self._admission.paused:
            super().start_accepting()


class _Slot:
    """One connection's share of its worker's admission, held for at most a grace each time.

    Held from the accept (`HEAD_GRACE_S`) and again from the request head
    (`hold(WORK_GRACE_S)`); released when the answer starts, when the grace runs out (the
    loop's timer calls `release`) or when the connection ends, whichever comes first.
    """

    __slots__ = ("_admission", "_held", "_timer")

    def __init__(self, admission: _Admission, grace_s: float) -> None:
        self._admission = admission
        self._held = False
        self._timer: Any = None
        self.hold(grace_s)

    def hold(self, grace_s: float) -> None:
        if not self._held:
            self._held = True
            self._admission.enter()
        self._stop_timer()
        self._timer = gevent.get_hub().loop.timer(grace_s)
        self._timer.start(self.release)

    def release(self) -> None:
        self._stop_timer()
        if self._held:
            self._held = False
            self._admission.leave()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer.close()
            self._timer = None


class _AnswerSocket:
    """The client socket as gunicorn's response writes an answer to it: one deadline for all.

    gunicorn sends an answer in several calls (status line and headers, then each body item;
    a file, such as a Swagger UI asset, in 8 KiB `send`s from gevent's `sendfile`), and a
    socket timeout bounds each call afresh: a client taking a few KiB before each ran out
    held its connection for as long as it liked (measured: 1.5 MB `swagger-ui-bundle.js`,
    `--send-timeout-s 1`, still connected after 15 s). Here the first send sets the deadline,
    `budget_s` later, and every send waits at most what is left of it; past it, TimeoutError.
    A new one per request, so each answer gets the whole budget. Its first send also calls
    `on_answer` (the request stops counting towards --max-active).
    """

    _BLOCK = 64 * 1024  # bytes read from a file per send

    def __init__(self, sock: Any, budget_s: float, on_answer: Callable[[], None]) -> None:
        self._sock = sock
        self._budget_s = budget_s
        self._on_answer = on_answer  # called once, at the first send
        self._end: float | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)  # everything but sending is the socket's own

    def _left(self) -> None:
        """Give the socket what is left of the deadline as its timeout (starting it once)."""
        now = time.monotonic()
        if self._end is None:
            self._end = now + self._budget_s
            self._on_answer()
        left = self._end - now
        if left <= 0:
            raise TimeoutError("answer not taken in time")
        self._sock.settimeout(left)

    def send(self, data: bytes, flags: int = 0) -> int:
        self._left()
        return int(self._sock.send(data, flags))

    def sendall(self, data: bytes, flags: int = 0) -> None:
        self._left()  # gevent's sendall applies one timeout to the whole call
        self._sock.sendall(data, flags)

    def sendfile(self, file: BinaryIO, offset: int = 0, count: int | None = None) -> int:
        """`socket.sendfile` through `sendall`, so the file shares the answer's deadline."""
        file.seek(offset)
        sent = 0
        while count is None or sent < count:
            block = file.read(self._BLOCK if count is None else min(self._BLOCK, count - sent))
            if not block:
                break
            self.sendall(block)
            sent += len(block)
        return sent

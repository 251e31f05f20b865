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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

import gevent
from gevent import monkey, socket
from gunicorn import util
from gunicorn.workers.ggevent import GeventWorker

from gateway.config import from_env
from gateway.errors import PROBLEM_JSON

PREFIX = "gpu_telemetry_gateway"


class _SlowClientMetrics:
    """Made on first use in a worker (prometheus_client in multiprocess mode by then)."""

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
    """gunicorn's gevent worker with a head deadline and connection metrics."""

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
        self.slow_metrics = _SlowClientMetrics()
        util.write_error = write_problem  # gunicorn's handle_error calls it through `util`
        super().init_process()

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        self.slow_metrics.connections.inc()
        try:
            if isinstance(client, ssl.SSLSocket) and not self._handshake(client):
                return  # the server closes the socket after this returns
            super().handle(listener, client, addr)
        finally:
            self.slow_metrics.connections.dec()

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        """gunicorn's, but an answer the client does not take in time closes the connection
        quietly and is counted (gunicorn logged each as a socket error with a traceback)."""
        sock.settimeout(self.send_timeout_s)  # gunicorn made it blocking; the head is read
        try:
            return super().handle_request(
                listener_name, req, _AnswerSocket(sock, self.send_timeout_s), addr
            )
        except TimeoutError:
            self.slow_metrics.slow_readers.inc()
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
            self.slow_metrics.slow.inc()
            self.log.debug("request head not complete in time; connection closed")
        finally:
            timer.close()


class _Deadline:
    """Whether a head deadline expired (set by `GatewayWorker._head_deadline`)."""

    expired = False


class _AnswerSocket:
    """The client socket as gunicorn's response writes an answer to it: one deadline for all.

    gunicorn sends an answer in several calls (status line and headers, then each body item;
    a file, such as a Swagger UI asset, in 8 KiB `send`s from gevent's `sendfile`), and a
    socket timeout bounds each call afresh: a client taking a few KiB before each ran out
    held its connection for as long as it liked (measured: 1.5 MB `swagger-ui-bundle.js`,
    `--send-timeout-s 1`, still connected after 15 s). Here the first send sets the deadline,
    `budget_s` later, and every send waits at most what is left of it; past it, TimeoutError.
    A new one per request, so each answer gets the whole budget.
    """

    _BLOCK = 64 * 1024  # bytes read from a file per send

    def __init__(self, sock: Any, budget_s: float) -> None:
        self._sock = sock
        self._budget_s = budget_s
        self._end: float | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)  # everything but sending is the socket's own

    def _left(self) -> None:
        """Give the socket what is left of the deadline as its timeout (starting it once)."""
        now = time.monotonic()
        if self._end is None:
            self._end = now + self._budget_s
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

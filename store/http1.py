"""A lean HTTP/1.1 client for the gateway's hot reads: POST a form, read the whole answer.

Why not urllib3 (which the InfluxDB store used here before): a request through urllib3 cost
the gateway ~0.8 ms of CPU before a byte of its answer was used (building the request,
`http.client`'s header parsing through the `email` package, chunked framing in Python):
the one-hour telemetry page's request took 2.05 ms of client CPU through urllib3 and
1.16 ms here, MessagePack decoding included (docs/benchmarks.md, "A GPU's catalog entry in
one window; the `/query` client without urllib3"). Each telemetry page is one such
request: that was about a fifth of the gateway's CPU for the page. Here a request is one
`sendall` of a prepared head and body, and the answer is framed by `httptools` (the C
parser the streamer's scrapes use: Content-Length, chunked, keep-alive).

Connections are kept alive and reused: up to `pool_size` idle ones, a request beyond them
opens another, which is then closed if the pool is full (never waits). A kept connection
the server closed while idle fails its next request before any answer: that request is
sent once more on a new connection (the reads here have no side effects). One deadline
bounds a whole request: connecting, sending and reading. `https` URLs use the system's
trust store (`ssl.create_default_context`; `SSL_CERT_FILE` names another), as urllib3 did.

Thread- and greenlet-safe: a connection belongs to one request at a time; the idle pool is
a list whose `pop` and `append` are atomic. Sockets are the `socket` module's, so they are
cooperative under gevent's monkey-patching (the gateway's worker) and plain in threads.
"""

from __future__ import annotations

import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field

import httptools

# An answer larger than this is refused (the reads here are bounded pages: a few MB at most).
MAX_BODY_BYTES = 256 * 1024 * 1024


class HttpError(OSError):
    """The request failed before a whole answer arrived (connection, deadline, framing)."""


@dataclass(slots=True)
class Answer:
    """A whole HTTP answer: status, its Content-Type and its body."""

    status: int
    content_type: str
    body: bytes


@dataclass(slots=True)
class _Reading:
    """What the parser has seen of one answer (its callbacks fill it)."""

    parser: httptools.HttpResponseParser | None = None  # set while reading (a cycle)
    status: int = 0
    keep_alive: bool = False
    content_type: bytes = b""
    body: list[bytes] = field(default_factory=list)
    size: int = 0
    too_large: bool = False
    complete: bool = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.content_type = value

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # the parser forgets it at the end

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_BODY_BYTES:
            self.too_large = True  # raised after `feed_data` (it wraps a callback's errors)
            self.body.clear()
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class Client:
    """POSTs form bodies to one URL (`url` + a path), keeping connections alive."""

    def __init__(self, url: str, headers: dict[str, str], timeout_s: float, pool_size: int):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r}: an http:// or https:// URL is needed")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/")
        host = f"[{self._host}]" if ":" in self._host else self._host
        default_port = self._port == (443 if self._tls else 80)
        lines = [f"Host: {host if default_port else f'{host}:{self._port}'}"]
        for name, value in headers.items():
            if any(c in name + value for c in "\r\n\x00"):  # would end the header early
                raise ValueError(f"HTTP header {name!r}: a control character in its value")
            lines.append(f"{name}: {value}")
        lines.append("Content-Type: application/x-www-form-urlencoded")
        self._head = "\r\n".join(lines)
        self._timeout_s = timeout_s
        self._pool_size = pool_size
        self._idle: list[socket.socket] = []

    def post(self, path: str, form: bytes) -> Answer:
        """POST `form` (an urlencoded body) to `path`; return the whole answer.

        Raises HttpError (an OSError) when no whole answer arrived within the deadline.
        """
        request = (
            f"POST {self._prefix}{path} HTTP/1.1\r\n{self._head}\r\n"
            f"Content-Length: {len(form)}\r\n\r\n"
        ).encode("latin-1") + form
        deadline = time.monotonic() + self._timeout_s
        try:
            conn, reused = self._idle.pop(), True
        except IndexError:
            conn, reused = self._connect(deadline), False
        try:
            try:
                answer, keep = self._exchange(conn, request, deadline, reused)
            except _Stale:
                conn.close()
                conn = self._connect(deadline)  # the server closed it while idle: once more
                answer, keep = self._exchange(conn, request, deadline, False)
        except BaseException:
            conn.close()
            raise
        if keep and len(self._idle) < self._pool_size:
            self._idle.append(conn)
        else:
            conn.close()
        return answer

    def close(self) -> None:
        """Close the idle connections (requests in flight close theirs when done)."""
        while self._idle:
            try:
                self._idle.pop().close()
            except IndexError:
                break

    def _connect(self, deadline: float) -> socket.socket:
        try:
            sock = socket.create_connection((self._host, self._port), _left(deadline))
        except TimeoutError as exc:
            raise HttpError(f"connecting to {self._host}:{self._port} timed out") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock.settimeout(_left(deadline))
                sock = self._tls.wrap_socket(sock, server_hostname=self._host)
        except BaseException as exc:
            sock.close()
            if isinstance(exc, TimeoutError):
                raise HttpError(f"TLS with {self._host}:{self._port} timed out") from exc
            raise
        return sock

    def _exchange(
        self, conn: socket.socket, request: bytes, deadline: float, stale_ok: bool
    ) -> tuple[Answer, bool]:
        """Send `request` on `conn` and read its answer; (answer, keep the connection).

        `stale_ok`: `conn` was kept alive, so its end before any answer raises _Stale.
        """
        reading = _Reading()
        parser = reading.parser = httptools.HttpResponseParser(reading)
        received = False
        try:
            conn.settimeout(_left(deadline))
            conn.sendall(request)
            while not reading.complete:
                conn.settimeout(_left(deadline))
                data = conn.recv(262_144)
                if not data:
                    if not received and stale_ok:
                        raise _Stale
                    raise HttpError("the server closed the connection before a whole answer")
                received = True
                parser.feed_data(data)
                if reading.too_large:
                    raise HttpError(f"an answer over {MAX_BODY_BYTES} bytes")
        except (ConnectionResetError, BrokenPipeError) as exc:
            if not received and stale_ok:
                raise _Stale from exc
            raise
        except TimeoutError as exc:
            raise HttpError(f"no whole answer within {self._timeout_s:g} s") from exc
        except httptools.HttpParserError as exc:
            raise HttpError(f"a malformed HTTP answer: {exc}") from exc
        finally:
            reading.parser = None
        body = b"".join(reading.body)
        return Answer(reading.status, reading.content_type.decode("latin-1"), body), (
            reading.keep_alive
        )


class _Stale(Exception):
    """A kept-alive connection the server had closed: nothing of the answer arrived."""


def _left(deadline: float) -> float:
    """The seconds left until `deadline` (TimeoutError when none)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left

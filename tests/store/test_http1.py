"""The `/query` client's HTTP/1.1 (store.http1) against scripted loopback servers.

The real InfluxDB behind it is covered by tests/store/test_influxql.py and every InfluxDB
store test; here are the cases a healthy influxd never produces on demand: an idle
connection closed under the client, an answer that never comes or stops halfway, a
malformed or oversized answer, `Connection: close`, and TLS with its trust store.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gputel.pki import CertificateAuthority
from store import StoreUnavailable, http1
from store.http1 import Client, HttpError
from store.v1query import QueryClient

# A script answers one request: (the request bytes, its number on its connection) -> the
# bytes to send, and whether to close the connection after them.
Script = Callable[[bytes, int], tuple[bytes, bool]]


def ok(body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 200 OK\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def chunked(*chunks: bytes) -> bytes:
    out = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    for c in chunks:
        out += f"{len(c):x}\r\n".encode() + c + b"\r\n"
    return out + b"0\r\n\r\n"


class Server:
    """A loopback server: one thread per connection, `script` answers each request."""

    def __init__(self, script: Script, tls: ssl.SSLContext | None = None) -> None:
        self.script, self.tls = script, tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, name="test-http1-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            n = 0
            while True:
                request = _read_request(conn)
                if request is None:
                    return
                self.requests.append(request)
                answer, close = self.script(request, n)
                n += 1
                conn.sendall(answer)
                if close:
                    return
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self.listener.close()
        for c in self.conns:
            c.close()


def _read_request(conn: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            return None
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += conn.recv(65536)
    return data


@contextmanager
def serving(script: Script, tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    server = Server(script, tls)
    try:
        yield server
    finally:
        server.close()


@contextmanager
def client_of(url: str, timeout_s: float = 5.0) -> Iterator[Client]:
    client = Client(url, {"Accept": "text/plain"}, timeout_s, 4)
    try:
        yield client
    finally:
        client.close()


def test_answers_are_read_whole_and_connections_kept_alive() -> None:
    answers = [ok(b"first", "Content-Type: text/plain"), chunked(b"sec", b"ond")]
    with serving(lambda req, n: (answers[n % 2], False)) as server:
        with client_of(f"http://127.0.0.1:{server.port}/prefix/") as client:
            first = client.post("/query", b"q=SELECT+1")
            second = client.post("/query", b"q=SELECT+2")
            assert (first.status, first.content_type, first.body) == (200, "text/plain", b"first")
            assert second.body == b"second"
        assert server.connections == 1  # the second request reused the first's connection
        head = server.requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
        assert head[0] == b"POST /prefix/query HTTP/1.1"
        assert f"Host: 127.0.0.1:{server.port}".encode() in head
        assert server.requests[1].endswith(b"\r\n\r\nq=SELECT+2")


def test_a_connection_the_server_closes_is_not_reused() -> None:
    """`Connection: close` ends the connection on the client's side too (the server here
    says so but keeps it open: a reuse would show as a second request on it)."""
    with serving(lambda req, n: (ok(b"x", "Connection: close"), False)) as server:
        with client_of(f"http://127.0.0.1:{server.port}") as client:
            assert [client.post("/q", b"").body for _ in range(3)] == [b"x"] * 3
        assert server.connections == 3


def test_an_idle_connection_closed_under_the_client_is_retried_once_on_a_new_one() -> None:
    """The server ends a kept-alive connection while the client holds it idle (a keep-alive
    timeout): the next request is sent again on a new connection, and succeeds."""
    with serving(lambda req, n: (ok(b"x"), False)) as server:
        with client_of(f"http://127.0.0.1:{server.port}") as client:
            assert client.post("/q", b"a=1").body == b"x"
            for c in server.conns:
                c.shutdown(socket.SHUT_RDWR)  # the server's side of the kept connection
            time.sleep(0.05)
            assert client.post("/q", b"a=2").body == b"x"
        assert server.connections == 2
        assert [r.endswith(b"a=2") for r in server.requests] == [False, True]


def test_an_answer_that_stops_halfway_fails_and_is_not_retried() -> None:
    with serving(lambda req, n: (ok(b"0123456789")[:-4], True)) as server:
        with (
            client_of(f"http://127.0.0.1:{server.port}") as client,
            pytest.raises(HttpError, match="closed the connection before a whole answer"),
        ):
            client.post("/q", b"")
        assert len(server.requests) == 1


def test_one_deadline_bounds_the_whole_request() -> None:
    def slow(req: bytes, n: int) -> tuple[bytes, bool]:
        time.sleep(3)
        return ok(b"late"), True

    with serving(slow) as server, client_of(f"http://127.0.0.1:{server.port}", 0.5) as client:
        started = time.monotonic()
        with pytest.raises(HttpError, match=r"no whole answer within 0\.5 s"):
            client.post("/q", b"")
        assert time.monotonic() - started < 1.5


def test_malformed_and_oversized_answers_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(script: Script, match: str) -> None:
        with serving(script) as server:
            url = f"http://127.0.0.1:{server.port}"
            with client_of(url) as client, pytest.raises(HttpError, match=match):
                client.post("/q", b"")

    fails(lambda req, n: (b"NOT HTTP AT ALL\r\n\r\n", True), "malformed")
    monkeypatch.setattr(http1, "MAX_BODY_BYTES", 100)
    fails(lambda req, n: (chunked(b"a" * 60, b"b" * 60), False), "over 100 bytes")


def test_failures_reach_the_store_as_unavailable() -> None:
    with serving(lambda req, n: (b"garbage\r\n\r\n", True)) as server:
        query = QueryClient(f"http://127.0.0.1:{server.port}", "db", "t")
        with pytest.raises(StoreUnavailable, match="InfluxDB query failed: HttpError"):
            query.series("SELECT 1")
        query.close()
    with pytest.raises(ValueError, match="http:// or https://"):
        QueryClient("ftp://127.0.0.1:1", "db", "t")
    with pytest.raises(ValueError, match="control character"):  # no header injection
        QueryClient("http://127.0.0.1:1", "db", "t\r\nX-Evil: 1")


def test_https_verifies_the_server_against_the_trust_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = CertificateAuthority("test CA")
    leaf = ca.issue("influx", ["127.0.0.1"])
    (tmp_path / "cert.pem").write_bytes(leaf.cert_pem)
    (tmp_path / "key.pem").write_bytes(leaf.key_pem)
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    with serving(lambda req, n: (ok(b"secret"), False), tls) as server:
        url = f"https://127.0.0.1:{server.port}"
        # the system's store does not know the test CA
        with client_of(url) as untrusting, pytest.raises(ssl.SSLCertVerificationError):
            untrusting.post("/q", b"")
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        with client_of(url) as client:
            assert [client.post("/q", b"").body for _ in range(2)] == [b"secret"] * 2
        assert server.connections == 2  # the refused handshake, then one kept connection

"""The scrape fetcher (`streamer.scraper`) against real HTTP servers on loopback.

Each server is a plain socket server in a thread, so a test decides exactly what goes on
the wire: Content-Length or chunked bodies, a close after the answer, a status, no answer
at all, an idle close between two scrapes.
"""

from __future__ import annotations

import gc
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from streamer import scraper
from streamer.scraper import Fetcher, Outcome, _Conn

PAGE = b'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-1"} 87\n' * 200

Answer = Callable[[socket.socket, bytes], bool]  # answers one request head; False: close


class Server:
    """Accepts connections and answers each request head with `answer` (one thread each)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/metrics"
        self.connections = 0
        self.heads: list[bytes] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    self.heads.append(head)
                    if not self.answer(conn, head):
                        return

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


def content_length(conn: socket.socket, _head: bytes) -> bool:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(PAGE), PAGE))
    return True


def chunked(conn: socket.socket, _head: bytes) -> bool:
    """As Go's net/http writes a page whose length it did not know: in chunks."""
    out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for i in range(0, len(PAGE), 1000):
        part = PAGE[i : i + 1000]
        out += b"%x\r\n%s\r\n" % (len(part), part)
    conn.sendall(out + b"0\r\n\r\n")
    return True


def dribbled(conn: socket.socket, _head: bytes) -> bool:
    """Chunked, the head a few bytes at a time and the body cut at odd places."""
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    for i in range(0, len(head), 3):
        conn.sendall(head[i : i + 3])
        time.sleep(0.001)
    body = b"".join(b"%x\r\n%s\r\n" % (len(PAGE[i : i + 997]), PAGE[i : i + 997])
                    for i in range(0, len(PAGE), 997)) + b"0\r\n\r\n"  # fmt: skip
    for i in range(0, len(body), 1013):
        conn.sendall(body[i : i + 1013])
    return True


def until_close(conn: socket.socket, _head: bytes) -> bool:
    """An HTTP/1.0-style answer: no length, the end of the connection ends the body."""
    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + PAGE)
    conn.shutdown(socket.SHUT_WR)
    return False


def reset_midway(conn: socket.socket, _head: bytes) -> bool:
    """Delimited by the end of the connection, as `until_close`, but cut inside a value by
    an abortive close (RST), as a crashing exporter or a middlebox does."""
    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + PAGE[: PAGE.rindex(b" 87") + 2])
    time.sleep(0.2)  # the scraper has read it all: only the end differs from `until_close`
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return False


@pytest.fixture
def servers() -> Iterator[Callable[[Answer], Server]]:
    made: list[Server] = []

    def make(answer: Answer) -> Server:
        made.append(Server(answer))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.fixture
def fetch() -> Iterator[Callable[..., list[Outcome]]]:
    """Scrape URLs with one fetcher (timeout 0.5 s, concurrency 4); their outcomes in order."""
    fetcher = Fetcher(0.5, 4).start()

    def run(*urls: str, wait_s: float = 5.0) -> list[Outcome]:
        got: queue.SimpleQueue[tuple[int, Outcome]] = queue.SimpleQueue()
        fetcher.submit((u, lambda o, i=i: got.put((i, o))) for i, u in enumerate(urls))
        out = dict(got.get(timeout=wait_s) for _ in urls)
        return [out[i] for i in range(len(urls))]

    yield run
    fetcher.close()
    assert not fetcher.alive()


@pytest.mark.parametrize("answer", [content_length, chunked, dribbled, until_close])
def test_a_page_arrives_whole_however_its_end_is_marked(servers, fetch, answer) -> None:
    s = servers(answer)
    before = time.time_ns()
    (first,), (second,) = fetch(s.url), fetch(s.url)
    for o in (first, second):
        assert o.error is None and o.text == PAGE.decode()
        assert before <= o.started_ns <= time.time_ns() and 0 <= o.duration_s < 0.5
    assert s.connections == (2 if answer is until_close else 1)  # kept alive when it may be
    assert s.heads[0].startswith(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:")


def test_a_page_cut_by_a_reset_fails_and_is_not_taken_for_a_whole_one(servers, fetch) -> None:
    (o,) = fetch(servers(reset_midway).url)
    assert o.text is None and o.error is not None and o.error.reason == "connection"
    assert "ConnectionResetError" in str(o.error)


def gzipped(conn: socket.socket, head: bytes) -> bool:
    """A page compressed although the request asked for identity (a proxy, a misconfig)."""
    import gzip

    body = gzip.compress(PAGE)
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )
    return True


def test_a_compressed_page_fails_as_a_bad_response_not_as_an_empty_one(servers, fetch) -> None:
    s = servers(gzipped)
    (o,) = fetch(s.url)
    assert o.text is None and o.error is not None and o.error.reason == "bad_response"
    assert "gzip" in str(o.error)
    assert b"\r\nAccept-Encoding: identity\r\n" in s.heads[0]


def test_a_status_other_than_200_fails_and_the_connection_is_kept(servers, fetch) -> None:
    s = servers(lambda c, _h: c.sendall(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n") or True)
    (first,), (second,) = fetch(s.url), fetch(s.url)
    assert first.error is not None and first.error.reason == "http_status"
    assert "503" in str(first.error) and second.error is not None
    assert s.connections == 1


def test_a_hanging_target_times_out_and_never_delays_the_others(servers, fetch) -> None:
    hung = servers(lambda _c, _h: time.sleep(3) or True)
    live = [servers(content_length) for _ in range(3)]
    outcomes = fetch(hung.url, hung.url, *(s.url for s in live))  # 2 of the 4 slots hang
    assert [o.error.reason for o in outcomes[:2] if o.error] == ["timeout", "timeout"]
    assert all(0.5 <= o.duration_s < 1.5 for o in outcomes[:2])  # held for the timeout only
    first_timeout_ns = min(o.started_ns + o.duration_s * 1e9 for o in outcomes[:2])
    for o in outcomes[2:]:  # answered while the hanging ones still waited
        assert o.error is None and o.text == PAGE.decode()
        assert o.started_ns + o.duration_s * 1e9 < first_timeout_ns


def test_concurrency_is_bounded_and_the_rest_waits_its_turn(servers) -> None:
    hung = servers(lambda _c, _h: time.sleep(2) or True)
    fetcher = Fetcher(0.4, 2).start()
    got: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
    try:
        fetcher.submit((hung.url, got.put) for _ in range(5))
        outcomes = [got.get(timeout=10) for _ in range(5)]
    finally:
        fetcher.close()
    assert all(o.error is not None and o.error.reason == "timeout" for o in outcomes)
    spans = [(o.started_ns / 1e9, o.started_ns / 1e9 + o.duration_s) for o in outcomes]
    for at, _end in spans:  # never more than two in flight at once
        assert sum(1 for a, b in spans if a <= at < b) <= 2, spans
    starts = sorted(a for a, _ in spans)
    # The third starts only when one of the first two gave up (its 0.4 s timeout).
    assert starts[2] - starts[0] >= 0.39 and starts[4] - starts[0] >= 0.78


def test_refused_unknown_and_oversized_pages_fail_with_their_reason(
    servers, fetch, monkeypatch
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{probe.getsockname()[1]}/metrics"
    monkeypatch.setattr(scraper, "MAX_PAGE_BYTES", 5000)
    big = servers(chunked)
    outcomes = fetch(refused, "ftp://127.0.0.1/metrics", big.url)
    assert [o.error.reason for o in outcomes if o.error] == ["connection", "bad_url", "too_large"]
    garbage = servers(lambda c, _h: c.sendall(b"SSH-2.0-OpenSSH\r\n\r\n") or True)
    (bad,) = fetch(garbage.url)
    assert bad.error is not None and bad.error.reason == "bad_response"


def endless(conn: socket.socket, _head: bytes) -> bool:
    """A chunked page that never ends (until the scraper aborts the connection)."""
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    try:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:
            conn.sendall(chunk)
    except OSError:
        return False


def test_an_aborted_page_is_freed_at_once_not_at_a_full_collection(
    servers, fetch, monkeypatch
) -> None:
    """A too large page, aborted from inside the parser's callback: its connection and the
    body read so far are freed by reference counting. Before, the parser's bound methods
    kept them in a cycle that only a full collection frees: 64 MiB a scrape meanwhile."""
    monkeypatch.setattr(scraper, "MAX_PAGE_BYTES", 256 * 1024)
    big = servers(endless)

    def held() -> tuple[int, int]:  # connections to `big` alive, and the body bytes they hold
        conns = [o for o in gc.get_objects() if isinstance(o, _Conn) and o.url == big.url]
        return len(conns), sum(len(b) for c in conns for b in c.body)

    gc.collect()
    gc.disable()  # as between the rare full collections of a busy streamer
    try:
        for _ in range(5):
            (o,) = fetch(big.url)
            assert o.error is not None and o.error.reason == "too_large"
        time.sleep(0.1)  # the aborted connection's `connection_lost`
        conns, body_bytes = held()
        assert conns <= 1 and body_bytes == 0  # the last one is kept until the next scrape
    finally:
        gc.enable()


def test_a_malformed_url_fails_as_bad_url_at_once_and_holds_no_slot(servers) -> None:
    """Before, `urlsplit`'s ValueError escaped the fetcher: the scrape held its slot until
    the timeout, was counted as one, and the targets behind it waited."""
    live = servers(content_length)
    bad = ["http://127.0.0.1:-1/x", "http://[::1/x", "http://127.0.0.1:99999/x", "http://h:0/"]
    fetcher = Fetcher(1.0, 2).start()
    got: queue.SimpleQueue[tuple[str, Outcome]] = queue.SimpleQueue()
    try:
        t0 = time.monotonic()
        fetcher.submit((u, lambda o, u=u: got.put((u, o))) for u in [*bad, live.url])
        outcomes = dict(got.get(timeout=5) for _ in range(5))
        elapsed_s = time.monotonic() - t0
    finally:
        fetcher.close()
    assert {u: o.error.reason for u, o in outcomes.items() if o.error} == dict.fromkeys(
        bad, "bad_url"
    )
    assert outcomes[live.url].text == PAGE.decode() and elapsed_s < 0.5


def test_an_idle_close_racing_the_next_request_is_retried_once(servers, fetch) -> None:
    """A server that closes a kept-alive connection as the next request arrives (its idle
    timeout) gets that request again on a new connection; the scrape succeeds."""
    answered: list[socket.socket] = []  # held, so no two connections look alike

    def answer_once_per_connection(conn: socket.socket, head: bytes) -> bool:
        if any(c is conn for c in answered):
            return False  # the second request on this connection: close without a word
        answered.append(conn)
        return content_length(conn, head)

    s = servers(answer_once_per_connection)
    (first,), (second,) = fetch(s.url), fetch(s.url)
    assert first.error is None and second.error is None and second.text == PAGE.decode()
    assert s.connections == 2


def test_every_scrape_error_reason_is_one_a_forgotten_target_drops() -> None:
    """`ScrapeMetrics.forget` removes a target's counters reason by reason."""
    import inspect
    import re

    from streamer import scraping
    from streamer.metrics import SCRAPE_ERRORS

    source = inspect.getsource(scraper) + inspect.getsource(scraping)
    used = set(re.findall(r'ScrapeError\(\s*"([a-z_]+)"', source))
    assert len(used) >= 5 and used <= set(SCRAPE_ERRORS)

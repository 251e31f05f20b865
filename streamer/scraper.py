"""HTTP scrapes of many targets from one thread: an asyncio loop, keep-alive, `httptools`.

`Fetcher.submit(jobs)` (any thread) starts scrapes; each one ends in exactly one call of its
`on_done(Outcome)` on the fetcher's thread (`scrape-io`): the page, or a `ScrapeError` whose
`reason` labels the per-target error counter. The callback must not block (the scrape
loop only queues it).

Why one loop and not a thread per scrape: a thousand targets a second on `http.client`
threads spent most of the streamer's CPU in thread hand-offs, the GIL and the pure-Python
status and header parsing. Here a scrape is a few callbacks: one `write` of a request
prepared once per target, `httptools` (the C HTTP parser uvicorn uses: Content-Length,
chunked and keep-alive handled as HTTP/1.1 says) on every received chunk, one join.

Bounds: at most `concurrency` scrapes in flight (the rest wait in order); each is bounded
by `timeout_s` from its start (connecting included), then its connection is aborted, so a
dead or hanging target holds one slot for at most the timeout and never delays the others;
a page over `MAX_PAGE_BYTES` is refused as it arrives. One kept-alive connection per target,
one request on it at a time (the scheduler never starts a target twice). A request on a
reused connection that the server closed before answering (an idle close racing our
request) is retried once on a new connection, as Go's and Prometheus' clients do.

Thread-safety: `submit`, `forget` and `close` may be called from any thread; everything
else runs on the fetcher's thread and owns its state without locks.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httptools

from streamer.targets import TargetsError, parse_url

log = logging.getLogger(__name__)

MAX_PAGE_BYTES = 64 * 1024 * 1024  # a page beyond this is refused, not read into memory


class ScrapeError(Exception):
    """A scrape that failed, with the reason counted per target."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one scrape ended: its page (`text`) or its `error`, and when it started."""

    started_ns: int  # wall clock when its request started (the samples' time by default)
    duration_s: float
    text: str | None = None
    error: ScrapeError | None = None


OnDone = Callable[[Outcome], None]


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """What a URL needs to be scraped: where to connect and the request's bytes."""

    host: str
    port: int
    tls: bool
    request: bytes

    @staticmethod
    def of(url: str) -> _Endpoint:
        try:  # checked where targets come in too; a URL given some other way is checked here
            u = parse_url(url)
        except TargetsError as exc:
            raise ScrapeError("bad_url", str(exc)) from None
        tls = u.scheme == "https"
        port = u.port or (443 if tls else 80)
        host_header = u.netloc
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\nAccept: text/plain\r\n"
            "Accept-Encoding: identity\r\n"
            "User-Agent: gputel-streamer\r\n\r\n"
        ).encode("latin-1")
        assert u.hostname is not None  # `parse_url` refuses a URL without one
        return _Endpoint(u.hostname, port, tls, request)


@dataclass(eq=False, slots=True)
class _Job:
    """One scrape in progress (fetcher thread only)."""

    url: str
    on_done: OnDone
    started_ns: int = 0
    t0: float = 0.0
    deadline: asyncio.TimerHandle | None = None
    connecting: asyncio.Task[Any] | None = None
    conn: _Conn | None = None
    retried: bool = False
    finished: bool = False


class _Conn(asyncio.Protocol):
    """One kept-alive connection to one target; at most one request in flight on it."""

    def __init__(self, fetcher: Fetcher, url: str) -> None:
        self.fetcher, self.url = fetcher, url
        self.transport: asyncio.Transport | None = None
        self.job: _Job | None = None
        self.closed = False
        self.requests = 0  # answered on this connection (>0: reused)
        self._reset()

    def _reset(self) -> None:
        # The parser holds this protocol's bound methods: a cycle. `_release` breaks it.
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.size = 0
        self.received = False  # any byte of the current response
        self.headers_done = False
        self.framed = False  # Content-Length or chunked: the end is known without EOF
        self.complete = False
        self.status = 0
        self.keep_alive = False  # read while the parser is on this response (it resets after)
        self.encoding = b""  # a Content-Encoding other than identity (never asked for)

    # ---- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if self.job is None or parser is None:  # nothing asked: a server talking out of turn
            self.abort()
            return
        self.received = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.job is not None:  # else it already failed (too large) in this chunk
                self.fetcher.fail(self.job, ScrapeError("bad_response", str(exc)))
            return
        if self.complete and self.job is not None:
            self.fetcher.answered(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        try:
            self._ended(exc)
        finally:
            self._release()

    def _ended(self, exc: Exception | None) -> None:
        """The connection ended: the end of a body delimited by it, a retry or a failure."""
        job = self.job
        if job is None or job.finished:
            return
        if self.headers_done and not self.framed and not self.complete and exc is None:
            # A body delimited by the end of the connection (HTTP/1.0): only a clean end (EOF)
            # ends it; a reset (`exc`) cut it anywhere, maybe inside a value, so it fails.
            self.complete = True
            self.fetcher.answered(self)
        elif not self.received and self.requests and not job.retried:
            self.fetcher.retry(job)  # an idle close raced the request: once more, new socket
        else:
            detail = f"{type(exc).__name__}: {exc}" if exc else "closed by the target"
            self.fetcher.fail(job, ScrapeError("connection", detail))

    # ---- httptools callbacks --------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in (b"content-length", b"transfer-encoding"):
            self.framed = True
        elif name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
            self.encoding = value.strip()[:40]

    def on_headers_complete(self) -> None:
        if self.parser is None:
            return  # failed earlier in this chunk (too large): what follows is not read
        self.headers_done = True
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if self.job is None:
            return  # failed meanwhile (too large): the rest of the chunk is dropped
        self.size += len(body)
        if self.size > MAX_PAGE_BYTES:
            too_large = ScrapeError("too_large", f"page over {MAX_PAGE_BYTES} bytes")
            self.fetcher.fail(self.job, too_large)
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    # ---- the fetcher's side ---------------------------------------------------------------

    def send(self, job: _Job, request: bytes) -> None:
        assert self.transport is not None
        self._reset()
        self.job, job.conn = job, self
        self.transport.write(request)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self._release()

    def _release(self) -> None:
        """Drop the parser and the body read so far, now, not at the next full collection.

        The parser refers to this protocol's bound methods and so to the body: a cycle that
        only the cyclic garbage collector frees, and a connection that lived through a
        young collection waits for a rare full one. An aborted page of up to
        `MAX_PAGE_BYTES` held that way for each too large scrape grew the streamer by
        64 MiB a scrape. Called from a parser callback too (`fail` inside `on_body`): the
        parser running `feed_data` is kept alive by that call until it returns.
        """
        self.parser = None
        self.body = []


@dataclass
class _Slots:
    """Scrapes in flight and waiting (the concurrency bound)."""

    limit: int
    running: int = 0
    waiting: deque[_Job] = field(default_factory=deque)
    admitting: bool = False  # `_admit` is running: a scrape ending inside it does not recurse


class Fetcher:
    """Scrapes URLs on one named thread (see the module docstring)."""

    def __init__(self, timeout_s: float, concurrency: int) -> None:
        self.timeout_s = timeout_s
        self._slots = _Slots(concurrency)
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._on_loop_error)
        self._thread = threading.Thread(target=self._run, name="scrape-io", daemon=True)
        self._conns: dict[str, _Conn] = {}
        self._endpoints: dict[str, _Endpoint] = {}
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    def start(self) -> Fetcher:
        """Start the fetcher's thread."""
        self._thread.start()
        return self

    def alive(self) -> bool:
        """True while the fetcher's thread runs (False before `start` and after `close`)."""
        return self._thread.is_alive()

    def submit(self, jobs: Iterable[tuple[str, OnDone]]) -> None:
        """Scrape each URL once; `on_done` gets its `Outcome` on the fetcher's thread."""
        batch = [_Job(url, on_done) for url, on_done in jobs]
        if batch and not self._closed:
            self._loop.call_soon_threadsafe(self._admit, batch)

    def forget(self, keep: set[str]) -> None:
        """Close the idle connections of targets no longer scraped here."""
        if not self._closed:
            self._loop.call_soon_threadsafe(self._forget, set(keep))

    def close(self) -> None:
        """Abort every scrape in flight (no outcome), close every connection, end the thread."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._shutdown)
            self._thread.join(10)
        elif self._thread.ident is None:  # never started
            self._loop.close()

    # ---- the fetcher's thread ---------------------------------------------------------------

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        log.info("scrape fetcher started", extra={"concurrency": self._slots.limit})
        try:
            loop.run_forever()
            pending = asyncio.all_tasks(loop)  # connections being made: cancelled, awaited
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_default_executor())
        except Exception:
            log.exception("scrape fetcher failed")
            raise
        finally:
            loop.close()
            log.info("scrape fetcher stopped")

    def _on_loop_error(self, _loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        log.error("scrape fetcher error", extra={
            "reason": str(context.get("message")), "error": repr(context.get("exception")),
        })  # fmt: skip

    def _shutdown(self) -> None:
        for conn in self._conns.values():
            conn.abort()
        self._conns.clear()
        for job in self._slots.waiting:
            job.finished = True
        self._slots.waiting.clear()
        self._loop.stop()

    def _forget(self, keep: set[str]) -> None:
        for url in [u for u, c in self._conns.items() if u not in keep and c.job is None]:
            self._conns.pop(url).abort()
            self._endpoints.pop(url, None)

    def _admit(self, jobs: list[_Job]) -> None:
        slots = self._slots
        slots.waiting.extend(jobs)
        if slots.admitting:
            return
        slots.admitting = True
        try:
            while slots.running < slots.limit and slots.waiting:
                slots.running += 1
                self._begin(slots.waiting.popleft())
        finally:
            slots.admitting = False

    def _begin(self, job: _Job) -> None:
        """Start a scrape: its deadline, then the request on a kept or new connection."""
        job.started_ns, job.t0 = time.time_ns(), time.monotonic()
        job.deadline = self._loop.call_later(self.timeout_s, self._expire, job)
        try:
            endpoint = self._endpoint(job.url)
        except ScrapeError as exc:
            self.fail(job, exc)
            return
        conn = self._conns.get(job.url)
        if conn is not None and not conn.closed and conn.job is None:
            conn.send(job, endpoint.request)
        else:
            job.connecting = self._loop.create_task(self._connect(job, endpoint))

    def _endpoint(self, url: str) -> _Endpoint:
        endpoint = self._endpoints.get(url)
        if endpoint is None:
            endpoint = self._endpoints[url] = _Endpoint.of(url)
        return endpoint

    async def _connect(self, job: _Job, endpoint: _Endpoint) -> None:
        old = self._conns.pop(job.url, None)
        if old is not None:
            old.abort()
        if endpoint.tls and self._tls is None:
            self._tls = ssl.create_default_context()
        try:
            _transport, conn = await self._loop.create_connection(
                lambda: _Conn(self, job.url), endpoint.host, endpoint.port,
                ssl=self._tls if endpoint.tls else None,
            )  # fmt: skip
        except (OSError, ssl.SSLError) as exc:
            self.fail(job, ScrapeError("connection", f"{type(exc).__name__}: {exc}"))
            return
        job.connecting = None
        if job.finished:  # the deadline passed while connecting
            conn.abort()
            return
        self._conns[job.url] = conn
        conn.send(job, endpoint.request)

    def retry(self, job: _Job) -> None:
        """Send the job again on a new connection (an idle close raced its request)."""
        job.retried, job.conn = True, None
        job.connecting = self._loop.create_task(self._connect(job, self._endpoint(job.url)))

    def answered(self, conn: _Conn) -> None:
        """A whole response arrived on `conn`: the page or an HTTP status error."""
        job = conn.job
        assert job is not None
        conn.job = None
        conn.requests += 1
        body, conn.body = conn.body, []
        if not conn.keep_alive or conn.closed:
            conn.abort()
        if conn.status != 200:
            self._finish(job, error=ScrapeError("http_status", f"HTTP {conn.status}"))
            return
        if conn.encoding:  # e.g. gzip although the request asked for identity: not read
            encoding = conn.encoding.decode("latin-1")
            error = ScrapeError("bad_response", f"Content-Encoding {encoding!r} (asked: identity)")
            self._finish(job, error=error)
            return
        self._finish(job, text=b"".join(body).decode("utf-8", errors="replace"))

    def fail(self, job: _Job, error: ScrapeError) -> None:
        """End a scrape with `error`; its connection (if any) is not reused."""
        if job.conn is not None:
            job.conn.job = None
            job.conn.abort()
        self._finish(job, error=error)

    def _expire(self, job: _Job) -> None:
        job.deadline = None
        if job.connecting is not None:
            job.connecting.cancel()
        self.fail(job, ScrapeError("timeout", f"no whole answer within {self.timeout_s} s"))

    def _finish(self, job: _Job, text: str | None = None, error: ScrapeError | None = None) -> None:
        if job.finished:
            return
        job.finished = True
        if job.deadline is not None:
            job.deadline.cancel()
        outcome = Outcome(job.started_ns, time.monotonic() - job.t0, text, error)
        try:
            job.on_done(outcome)
        finally:
            self._slots.running -= 1
            self._admit([])

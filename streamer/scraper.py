"""One HTTP scrape of one target: GET its metrics page within a timeout, keep-alive per target.

`Fetcher.fetch(url)` returns the page and when the request started, or raises
`ScrapeError` with a `reason` (the label of the per-target error counter). A connection
is kept per target and reused by its next scrape; a target is scraped by one worker at a
time (the scheduler's rule), so a connection is never shared by two threads. The lock
guards only the dict of connections.
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass

MAX_PAGE_BYTES = 64 * 1024 * 1024  # a page beyond this is refused, not read into memory


class ScrapeError(Exception):
    """A scrape that failed, with the reason counted per target."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Page:
    """A fetched metrics page and the wall-clock time (ns) its request started."""

    text: str
    started_ns: int
    duration_s: float


class Fetcher:
    """Fetches metrics pages with one persistent connection per target."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._conns: dict[str, http.client.HTTPConnection] = {}
        self._lock = threading.Lock()

    def fetch(self, url: str) -> Page:
        """GET `url`; raise `ScrapeError` on a timeout, a refused connection or a bad status."""
        started_ns, t0 = time.time_ns(), time.monotonic()
        conn = self._conn(url)
        u = urllib.parse.urlsplit(url)
        try:
            conn.timeout = self.timeout_s
            if conn.sock is not None:
                conn.sock.settimeout(self.timeout_s)
            conn.request("GET", (u.path or "/") + (f"?{u.query}" if u.query else ""),
                         headers={"Accept": "text/plain"})  # fmt: skip
            resp = conn.getresponse()
            body = resp.read(MAX_PAGE_BYTES + 1)
        except TimeoutError as exc:
            self._drop(url)
            raise ScrapeError("timeout", str(exc) or "no answer in time") from None
        except (OSError, http.client.HTTPException) as exc:
            self._drop(url)
            raise ScrapeError("connection", f"{type(exc).__name__}: {exc}") from None
        if time.monotonic() - t0 > self.timeout_s:
            self._drop(url)
            raise ScrapeError("timeout", "the page took longer than the scrape timeout")
        if resp.status != 200:
            raise ScrapeError("http_status", f"HTTP {resp.status}")
        if len(body) > MAX_PAGE_BYTES:
            self._drop(url)
            raise ScrapeError("too_large", f"page over {MAX_PAGE_BYTES} bytes")
        return Page(body.decode("utf-8", errors="replace"), started_ns, time.monotonic() - t0)

    def _conn(self, url: str) -> http.client.HTTPConnection:
        with self._lock:
            conn = self._conns.get(url)
            if conn is None:
                u = urllib.parse.urlsplit(url)
                host, port = u.hostname or "", u.port
                conn = (
                    http.client.HTTPSConnection(
                        host, port, timeout=self.timeout_s, context=ssl.create_default_context()
                    )
                    if u.scheme == "https"
                    else http.client.HTTPConnection(host, port, timeout=self.timeout_s)
                )
                self._conns[url] = conn
            return conn

    def _drop(self, url: str) -> None:
        with self._lock:
            conn = self._conns.pop(url, None)
        if conn is not None:
            conn.close()

    def forget(self, keep: set[str]) -> None:
        """Close the connections of targets no longer scraped here."""
        with self._lock:
            gone = [u for u in self._conns if u not in keep]
        for u in gone:
            self._drop(u)

    def close(self) -> None:
        """Close every connection."""
        self.forget(set())

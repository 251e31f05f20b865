"""The streamer's HTTP endpoints on one port: `/metrics`, `/healthz` and `/readyz`.

`/healthz` answers 200 while the process runs; `/readyz` answers 200 while `ready()`
is true (joined to the producer group and connected), else 503. The server runs in a
named daemon thread, started and stopped explicitly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


def split_address(address: str) -> tuple[str, int]:
    """Return (host, port) of `HOST:PORT` (an empty host means every interface)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not a HOST:PORT address: {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class Endpoints:
    """An HTTP server for metrics and probes."""

    def __init__(
        self, address: str, registry: CollectorRegistry, ready: Callable[[], bool]
    ) -> None:
        host, port = split_address(address)
        handler = _handler(registry, ready)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="streamer-http", daemon=True
        )

    @property
    def port(self) -> int:
        """The port the server listens on (useful with port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> Endpoints:
        """Start serving in the `streamer-http` thread."""
        self._thread.start()
        log.info("loop started", extra={"loop": "streamer-http", "port": self.port})
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        log.info("loop stopped", extra={"loop": "streamer-http"})


def _handler(
    registry: CollectorRegistry, ready: Callable[[], bool]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(200, b"ok\n")
            elif path == "/readyz":
                ok = ready()
                self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            else:
                self._send(404, b"not found\n")

        def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # probes every few seconds would drown the structured log

    return Handler

"""One small HTTP server per process for `/healthz`, `/readyz` and Prometheus `/metrics`.

`/healthz` answers 200 while the process runs. `/readyz` answers 200 while the
process's readiness check says so, else 503, with the check's details as JSON.
`/metrics` is served when a registry is given. The server runs in a named
daemon thread, started and stopped explicitly (the streamer and the collector use it).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

# Returns (ready, details shown in the /readyz body).
Readiness = Callable[[], tuple[bool, dict[str, Any]]]


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of `HOST:PORT`; an empty host means every interface."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not a HOST:PORT address: {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class _Server(ThreadingHTTPServer):
    """socketserver's server, with its per-request errors logged as structured lines.

    A client that resets its connection mid-answer (a scraper's timeout) is normal: one
    debug line, not the traceback socketserver prints on stderr for every such request.
    """

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):
            log.debug("probe client went away", extra={"client": str(client_address)})
            return
        log.warning("probe request failed", exc_info=True, extra={"client": str(client_address)})


class ProbeServer:
    """Serves the probes, and /metrics when given a registry, on one HOST:PORT."""

    def __init__(
        self,
        listen: str,
        readiness: Readiness,
        registry: CollectorRegistry | None = None,
        name: str = "probes-http",
    ) -> None:
        self.listen, self.name = listen, name
        self._server = _Server(split_address(listen), _handler(readiness, registry))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when listening on port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> ProbeServer:
        """Start serving in the server's named thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=self.name, daemon=True
        )
        self._thread.start()
        log.info("loop started", extra={"loop": self.name, "listen": self.listen})
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            log.info("loop stopped", extra={"loop": self.name, "listen": self.listen})
        self._server.server_close()


def _handler(
    readiness: Readiness, registry: CollectorRegistry | None
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send(200, "application/json", b'{"status":"ok"}')
            elif path == "/readyz":
                ready, detail = readiness()
                body = json.dumps({"ready": ready, **detail}).encode()
                self._send(200 if ready else 503, "application/json", body)
            elif path == "/metrics" and registry is not None:
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every few seconds would flood the structured log

    return Handler

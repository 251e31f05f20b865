"""The collector's HTTP endpoint: /healthz, /readyz and (optionally) Prometheus /metrics.

`/healthz` answers 200 while the process runs; `/readyz` answers 200 while the store
accepts writes and 503 after repeated failures, with a small JSON body either way.
One `HttpEndpoint` per listen address; its `collector-http` thread serves requests.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

Readiness = Callable[[], tuple[bool, dict[str, Any]]]


class HttpEndpoint:
    """Serves health probes, and /metrics when given a registry, on one HOST:PORT."""

    def __init__(
        self, listen: str, readiness: Readiness, registry: CollectorRegistry | None = None
    ) -> None:
        host, _, port = listen.rpartition(":")
        self.listen = listen
        self._server = ThreadingHTTPServer((host, int(port)), _handler(readiness, registry))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when listening on port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> HttpEndpoint:
        """Start the `collector-http` thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="collector-http", daemon=True
        )
        self._thread.start()
        log.info("loop started", extra={"loop": "collector-http", "listen": self.listen})
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            log.info("loop stopped", extra={"loop": "collector-http", "listen": self.listen})
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
            pass  # probes every few seconds would flood the log

    return Handler

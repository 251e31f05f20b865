"""The gateway's TLS context: one per worker, its certificate re-read when the files change.

gunicorn asks `gunicorn_conf.ssl_context` for a context. Its gevent worker (the gateway's
default) asks once and keeps the answer for the worker's life, so a renewed certificate —
cert-manager renews the Secret and kubelet swaps the mounted files — was served only after
a SIGHUP or a restart; its sync and gthread workers asked at every connection, reading and
parsing both files each time. Now each worker keeps one context, and at a new connection,
at most once every CHECK_INTERVAL_S, compares the files' stamps (inode, size, mtime) with
those it loaded. When they changed it loads the new pair into the same context: the next
handshakes serve the new certificate, connections already open keep theirs. A pair that
does not load (half written, a key that does not match) keeps the previous certificate, is
logged, and is tried again at the next check.

Thread-safe: gthread wraps sockets in its pool's threads, so a check holds a lock (never
across I/O other than reading the two files).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from walbroker.tls import file_stamp

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 1.0


class ReloadingContext:
    """An `ssl.SSLContext` whose certificate follows its files; `wrap_socket` checks them."""

    def __init__(
        self,
        factory: Callable[[], ssl.SSLContext],
        cert: str,
        key: str,
        defer_handshake: bool = False,
    ) -> None:
        self.cert, self.key = Path(cert), Path(key)
        self._lock = threading.Lock()
        self._stamp = file_stamp([self.cert, self.key])  # before loading: a change after it is seen
        self.context = factory()
        self._checked = time.monotonic()
        self.loaded = 1
        log.info("TLS certificate loaded", extra={"cert": str(self.cert)})  # once per worker
        wrap = self.context.wrap_socket

        def wrap_socket(sock: Any, *args: Any, **kwargs: Any) -> Any:
            self.check()
            if defer_handshake:
                kwargs["do_handshake_on_connect"] = False
            return wrap(sock, *args, **kwargs)

        self.context.wrap_socket = wrap_socket  # type: ignore[method-assign]

    def check(self) -> None:
        """Load the files again if they changed (looked at most once every CHECK_INTERVAL_S)."""
        now = time.monotonic()
        if now - self._checked < CHECK_INTERVAL_S:
            return
        with self._lock:
            if now - self._checked < CHECK_INTERVAL_S:
                return
            self._checked = now
            try:
                stamp = file_stamp([self.cert, self.key])
                if stamp == self._stamp:
                    return
                self.context.load_cert_chain(certfile=self.cert, keyfile=self.key)
            except (OSError, ssl.SSLError) as exc:
                log.error(
                    "TLS certificate or key unusable; still serving the previous certificate "
                    "(fix the files: they are tried again within a second)",
                    extra={"cert": str(self.cert), "key": str(self.key), "error": str(exc)},
                )
                return
            self._stamp = stamp
            self.loaded += 1
        log.info("TLS certificate re-read", extra={"cert": str(self.cert)})

"""A short-lived cache of GPU-list pages, per app (each gunicorn worker has its own).

Listing GPUs is the most frequent call of dashboards and scripts and its answer
changes only when a GPU appears or its `last_seen` moves, so a page is served from
memory for `catalog_cache_s` seconds (0 turns the cache off). Entries are keyed by
the page's full query; the cache holds at most MAX_ENTRIES and is thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

from flask import Flask, current_app

MAX_ENTRIES = 256
_KEY = "gputel.catalog_cache"


class TtlCache:
    """Values computed by a callable, kept for `ttl_s` seconds."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[Hashable, tuple[float, bytes]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], bytes]) -> bytes:
        """The cached value of `key`, or `compute()` (stored when the cache is on)."""
        if self.ttl_s <= 0:
            return compute()
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = compute()
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
            if len(self._entries) < MAX_ENTRIES:
                self._entries[key] = (now + self.ttl_s, value)
        return value


def init_app(app: Flask, ttl_s: float) -> None:
    """Give `app` its cache."""
    app.extensions[_KEY] = TtlCache(ttl_s)


def current_cache() -> TtlCache:
    """The cache of the app handling this request."""
    cache: TtlCache = current_app.extensions[_KEY]
    return cache

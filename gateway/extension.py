"""The store as a Flask extension: opened on first use in each process, closed explicitly.

Opening lazily keeps `create_app` free of I/O, lets /healthz answer while the store is broken,
and means a gunicorn worker never inherits a connection opened before the fork. Thread-safe:
the lock guards only the open; the stores themselves are safe to share between threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from flask import Flask, current_app

from store import Store

KEY = "gputel.store"


class StoreExtension:
    """Owns one process's store handle."""

    def __init__(self, opener: Callable[[], Store]) -> None:
        self._opener = opener
        self._store: Store | None = None
        self._lock = threading.Lock()

    def get(self) -> Store:
        """Return the store, opening it on first use (StoreError propagates)."""
        store = self._store
        if store is not None:
            return store
        with self._lock:
            if self._store is None:
                self._store = self._opener()
            return self._store

    def close(self) -> None:
        """Close the store if it was opened; a later `get` opens it again."""
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()


def init_app(app: Flask, opener: Callable[[], Store]) -> StoreExtension:
    """Attach a store extension built from `opener` to `app`."""
    ext = StoreExtension(opener)
    app.extensions[KEY] = ext
    return ext


def extension(app: Flask) -> StoreExtension:
    """Return the store extension of `app`."""
    ext: StoreExtension = app.extensions[KEY]
    return ext


def current_store() -> Store:
    """Return the store of the app handling the current request."""
    return extension(current_app).get()

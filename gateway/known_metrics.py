"""Which metric names the store holds, so that `?metric=TYPO` is a 400 instead of an empty page.

Each app keeps the names it has seen (a set that only grows). A request naming only known
metrics costs nothing; a name not in the set makes the app ask the store again, at most once
per `REFRESH_S` (a client sending typos in a loop cannot turn every request into a catalog
query), and a name still missing after that is refused with the list of known ones.
Thread-safe: the lock guards the set and the refresh time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from flask import Flask, current_app

from gateway.errors import BadRequest
from store import Store

REFRESH_S = 1.0
_KEY = "gputel.known_metrics"


class KnownMetrics:
    """The metric names seen in the store, refreshed on a miss."""

    def __init__(self, refresh_s: float = REFRESH_S) -> None:
        self.refresh_s = refresh_s
        self._names: set[str] = set()
        self._refreshed = float("-inf")
        self._lock = threading.Lock()

    def unknown(self, store: Store, names: Sequence[str]) -> list[str]:
        """The names in `names` the store has no data for."""
        with self._lock:
            missing = [n for n in names if n not in self._names]
            stale = time.monotonic() - self._refreshed >= self.refresh_s
        if missing and stale:
            fresh = store.list_metrics()
            with self._lock:
                self._names.update(fresh)
                self._refreshed = time.monotonic()
                missing = [n for n in missing if n not in self._names]
        return missing

    def names(self) -> list[str]:
        """Every name seen so far, sorted."""
        with self._lock:
            return sorted(self._names)


def init_app(app: Flask) -> None:
    """Give `app` its set of known metrics."""
    app.extensions[_KEY] = KnownMetrics()


def check(store: Store, names: Sequence[str] | None) -> None:
    """Raise 400 naming the unknown metrics in `names` and listing the known ones."""
    if not names:
        return
    known: KnownMetrics = current_app.extensions[_KEY]
    missing = known.unknown(store, names)
    if missing:
        listed = ", ".join(known.names()) or "none yet"
        raise BadRequest(
            f"metric: unknown {', '.join(repr(n[:64]) for n in missing[:5])}; known: {listed}",
            parameter="metric",
            known_metrics=known.names(),
        )

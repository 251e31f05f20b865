"""Pacing of the stream: a token bucket for rows per second.

The bucket holds at most `burst` tokens and refills at `rate_per_s`; `take` waits
(on a stop event, so shutdown never waits for it) until all the tokens it asks for
(at most a burst) exist, in one sleep: a paced sender then sends whole chunks (one
batch each) instead of the few rows that trickled in since its last call, and wakes
once per chunk instead of once per row.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """Allows `rate_per_s` units per second on average, bursts up to `burst`. Not thread-safe."""

    def __init__(
        self,
        rate_per_s: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate_per_s
        self.burst = max(1.0, burst if burst is not None else rate_per_s / 10)
        self.clock = clock
        self._tokens = self.burst
        self._at = clock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def grant(self, want: int) -> int:
        """Return how many of `want` units may go now (at least 0), and spend them."""
        self._refill()
        n = min(want, int(self._tokens))
        self._tokens -= n
        return n

    def delay_s(self, want: int = 1) -> float:
        """Return the seconds until `want` units (capped at the burst) are available."""
        self._refill()
        missing = min(float(want), self.burst) - self._tokens
        return max(0.0, missing / self.rate)

    def take(self, want: int, stop: threading.Event) -> int:
        """Wait until `want` units (capped at the burst) are available and spend them.

        Return how many were granted: min(want, burst), or 0 if `stop` was set first.
        """
        want = min(want, int(self.burst))
        while want > 0 and not stop.is_set():
            delay = self.delay_s(want)
            if delay <= 0:
                return self.grant(want)
            stop.wait(delay)
        return 0

"""Pacing of the stream: a token bucket for rows per second, and the grid passes start on.

The bucket holds at most `burst` tokens and refills at `rate_per_s`; `take` waits
(on a stop event, so shutdown never waits for it) until all the tokens it asks for
(at most a burst) exist, in one sleep: a paced sender then sends whole chunks (one
batch each) instead of the few rows that trickled in since its last call, and wakes
once per chunk instead of once per row.
"""

from __future__ import annotations

import math
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


class PassGrid:
    """When a partition's next pass may start: on ticks `k x interval_s` of the wall clock.

    Every streamer uses the same grid, so the one that takes a partition over agrees with
    the one that streamed it before. A pass belongs to one slot (tick): the tick it
    waited for, or the current one when it starts late; a first pass (nothing streamed
    yet) starts at once and counts as the next tick's. The next pass waits for the
    following tick, so passes of a partition start at least one interval apart (at
    most two, after a handover: the new owner does not know when the last pass began
    and waits for the tick after the next one). `interval_s` None: passes back to back.
    """

    def __init__(self, interval_s: float | None, clock: Callable[[], float] = time.time) -> None:
        self.interval = interval_s
        self.clock = clock

    def due(self, next_pass_at: float) -> bool:
        """True once a pass scheduled at `next_pass_at` (wall clock) may start."""
        return self.interval is None or self.clock() >= next_pass_at

    def after_handover(self) -> float:
        """The start of the next pass of a partition taken over at a pass boundary."""
        if self.interval is None:
            return 0.0
        return (math.ceil(self.clock() / self.interval) + 1) * self.interval

    def slot(self, next_pass_at: float) -> int:
        """The slot of a pass starting now, scheduled for `next_pass_at` (0: not scheduled)."""
        if self.interval is None:
            return 0
        now = self.clock() / self.interval
        scheduled = round(next_pass_at / self.interval) if next_pass_at else math.ceil(now)
        return max(scheduled, math.floor(now))

    def next_start(self, slot: int) -> float:
        """The start of the pass after the one of `slot`."""
        return 0.0 if self.interval is None else (slot + 1) * self.interval

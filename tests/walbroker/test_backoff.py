"""The clients' retry backoff: exponential with full jitter, and its own random generator."""

from __future__ import annotations

import random

from walbroker.client import Backoff


def test_jitter_leaves_the_programs_global_random_state_alone():
    """Clients retry from background threads: drawing from the global `random` moved the
    state of the program embedding them (Hypothesis failed tests running beside a consumer
    that was reconnecting)."""
    before = random.getstate()
    backoff = Backoff(initial_ms=10, max_ms=80)
    waits = [backoff.next_s() for _ in range(20)]
    assert random.getstate() == before
    assert 0.005 <= waits[0] <= 0.01 and all(0.04 <= w <= 0.08 for w in waits[3:])
    assert len(set(waits)) > 10  # jittered
    assert backoff.next_s(retry_after_ms=500) == 0.5  # the server's hint wins when longer

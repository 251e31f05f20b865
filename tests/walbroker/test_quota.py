"""The per-client byte-rate buckets: one second of burst, debt paid by waiting, clients apart."""

from __future__ import annotations

import pytest

from walbroker.quota import TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_second_of_burst_then_the_rate():
    clock = Clock()
    b = TokenBuckets(1000, clock=clock)
    assert b.take("a", 1000) == 0  # the burst
    assert b.take("a", 500) == pytest.approx(0.5)  # in debt: wait until it is paid
    clock.now += 0.5
    assert b.take("a", 0) == 0  # paid, nothing left
    assert b.take("a", 250) == pytest.approx(0.25)


def test_credit_never_exceeds_one_second():
    clock = Clock()
    b = TokenBuckets(1000, clock=clock)
    b.take("a", 0)
    clock.now += 3600  # idle for an hour: still one second of credit, not an hour's
    assert b.take("a", 1000) == 0
    assert b.take("a", 1000) == pytest.approx(1.0)


def test_clients_do_not_share_a_bucket_and_the_oldest_are_forgotten():
    clock = Clock()
    b = TokenBuckets(1000, max_clients=2, clock=clock)
    assert b.take("greedy", 5000) == pytest.approx(4.0)
    assert b.take("good", 1000) == 0  # the greedy client's debt is its own
    b.take("third", 0)  # a third client: the least recently used ("greedy") is forgotten
    assert b.take("greedy", 1000) == 0  # back with a full second of credit

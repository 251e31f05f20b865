"""Fixtures of tests/hostile: a real broker with a well-behaved client's topic, idle streams from
another process; collector processes and targets come from the collector tests."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from tests.collector.conftest import collectors, sqlite_target
from tests.fixtures.broker import BrokerProcess
from tests.hostile.support import GOOD_TOPIC, scrape

__all__ = ["collectors", "sqlite_target"]


@pytest.fixture
def hostile_broker(broker_factory: Callable[..., BrokerProcess]) -> Callable[..., BrokerProcess]:
    """Start a broker with the well-behaved client's topic plus `args`."""

    def start(*args: str) -> BrokerProcess:
        return broker_factory("--topic", f"{GOOD_TOPIC}:8", *args).start()

    return start


class IdleStreams:
    """`tests.hostile.idle_streams` in a process of its own."""

    def __init__(self, address: str, n: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.hostile.idle_streams", address, str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        words = self.proc.stdout.readline().split(maxsplit=4)
        assert words[:1] == ["open"], words
        self.refused = int(words[3])
        self.detail = words[4].strip() if len(words) > 4 else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def idle_streams() -> Iterator[Callable[[str, int], IdleStreams]]:
    """Open idle Publish streams from another process (`idle_streams(address, n)`)."""
    made: list[IdleStreams] = []

    def open_(address: str, n: int) -> IdleStreams:
        made.append(IdleStreams(address, n))
        return made[-1]

    yield open_
    for s in made:
        s.close()


def wait_metric(url: str, name: str, at_least: float, timeout_s: float = 60.0) -> float:
    """Poll a metric until it reaches `at_least`; return its value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = scrape(url, name)
        if value >= at_least or time.monotonic() > deadline:
            return value
        time.sleep(0.2)

"""Fixtures of the streamer tests: `gputel-streamer` subprocesses killed after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.streamer.streaming import StreamerProcess


@pytest.fixture
def streamer_process(tmp_path: Path) -> Iterator[Callable[..., StreamerProcess]]:
    """Start `gputel-streamer *args` (`streamer_process(*args)`); leftovers are killed."""
    started: list[StreamerProcess] = []

    def start(*args: str) -> StreamerProcess:
        s = StreamerProcess(tmp_path, f"streamer{len(started)}", *args)
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()

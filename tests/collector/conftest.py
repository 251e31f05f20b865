"""Fixtures for collector tests: where collectors write, and collector processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.collector.helpers import CollectorProcess, StoreTarget
from tests.fixtures.broker import BrokerProcess


@pytest.fixture(params=["sqlite", "influx"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> StoreTarget:
    """A real SQLite file, or a fresh database on the session's real InfluxDB."""
    if request.param == "sqlite":
        return StoreTarget.sqlite(tmp_path / "telemetry.db")
    server = request.getfixturevalue("influx_server")
    return StoreTarget.influx(server.create_database())


@pytest.fixture
def sqlite_target(tmp_path: Path) -> StoreTarget:
    return StoreTarget.sqlite(tmp_path / "telemetry.db")


@pytest.fixture
def collectors(tmp_path: Path, broker: BrokerProcess) -> Iterator[Callable[..., CollectorProcess]]:
    """Start collector processes on `broker` (`collectors(target, *flags)`); killed afterwards."""
    made: list[CollectorProcess] = []

    def start(target: StoreTarget, *extra: str) -> CollectorProcess:
        c = CollectorProcess(broker.address, target, tmp_path / f"collector{len(made)}.log", *extra)
        made.append(c)
        return c

    yield start
    for c in made:
        if c.proc.poll() is None:
            c.kill()

"""Store fixtures: every contract test runs against a real SQLite file and a real InfluxDB."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from store import Store, open_store
from tests.fixtures.influx import InfluxServer


@pytest.fixture(params=["sqlite", "influx"])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[Store]:
    """Return an empty store of each kind (a fresh SQLite file, or a fresh InfluxDB database)."""
    if request.param == "sqlite":
        opened = open_store(f"sqlite:{tmp_path / 'telemetry.db'}")
    else:
        server: InfluxServer = request.getfixturevalue("influx_server")
        opened = open_store("influx", **server.create_database().store_opts())
    try:
        yield opened
    finally:
        opened.close()

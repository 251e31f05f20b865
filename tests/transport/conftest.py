"""The transport contract runs against every backend: `backend` is parametrised."""

from __future__ import annotations

import pytest

from gputel.transport.factory import Transport
from tests.transport.backends import Backend


@pytest.fixture(params=["walbroker", "kafka"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "walbroker":
        broker = request.getfixturevalue("broker")
        return Backend("walbroker", Transport.of(broker.address))
    cluster = request.getfixturevalue("kafka1")
    return Backend("kafka", Transport.of(cluster.url))

"""The rogue member: with authentication on, a client without a token, and one holding only
a `produce` token, try to join the collectors' group while data flows. Both are refused
(UNAUTHENTICATED, PERMISSION_DENIED), never get a partition, and the store ends exact with
lag 0 — the incident this guards against committed points that were never stored.

Real broker (tokens + TLS), real collector process, real SQLite file.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.collector.helpers import (
    GROUP,
    TOPIC,
    CollectorProcess,
    StoreTarget,
    Telemetry,
    lag,
    wait_exact,
)
from tests.fixtures.broker import BrokerProcess
from tests.fixtures.secure import Credentials
from walbroker.consumer import Consumer
from walbroker.credentials import ClientSecurity
from walbroker.errors import AccessError, PermissionDenied, Unauthenticated


def attempt_join(address: str, security: ClientSecurity) -> AccessError | None:
    """Try to join the collectors' group; the refusal, or None if it got an assignment."""
    c = Consumer(address, GROUP, TOPIC, client_id="rogue", security=security).start()
    try:
        c.wait_for_assignment(20)
        c.poll(2.0)
        c.commit()  # what the rogue of the incident did: acknowledge without storing
        return None
    except AccessError as exc:
        return exc
    finally:
        c.close()


def test_rogue_members_are_refused_and_the_store_stays_exact(
    tmp_path: Path, broker_factory: Callable[..., BrokerProcess]
) -> None:
    creds = Credentials(tmp_path / "creds")
    creds.add("streamer", "produce", "topic=telemetry")
    creds.add("collector", "consume,produce", "consume:topic=telemetry",
              "consume:group=collectors", "produce:topic=telemetry.dlq")  # fmt: skip
    creds.add("ops", "read")
    b = broker_factory("--topic", "telemetry:4", "--topic", "telemetry.dlq:2", *creds.broker_args(),
                       credentials=creds.channel_credentials()).start()  # fmt: skip
    target = StoreTarget.sqlite(tmp_path / "telemetry.db")
    collector = CollectorProcess(
        b.address, target, tmp_path / "collector.log",
        "--token-file", str(creds.token_path("collector")), "--tls-ca", str(creds.ca_file),
    )  # fmt: skip
    try:
        collector.wait_ready()
        data = Telemetry(b.address, security=creds.client("streamer"))
        publishing = data.in_background(range(40), pace_s=0.05)
        refusals: dict[str, AccessError | None] = {}

        def rogue(name: str, sec: ClientSecurity) -> None:
            refusals[name] = attempt_join(b.address, sec)

        rogues = [
            threading.Thread(target=rogue, args=("no token", creds.client(None))),
            threading.Thread(target=rogue, args=("produce token", creds.client("streamer"))),
        ]
        for t in rogues:
            t.start()
        for t in rogues:
            t.join(60)
        publishing()
        assert isinstance(refusals["no token"], Unauthenticated), refusals
        assert isinstance(refusals["produce token"], PermissionDenied), refusals
        assert "join consumer group" in refusals["produce token"].message
        with target.open() as store:
            counts = wait_exact(store, data.expected())
        assert counts == data.expected()
        assert set(lag(b.address, security=creds.client("ops")).values()) == {0}
        log = b.log_text()
        assert "missing_token" in log and "denied" in log and "streamer" in log
    finally:
        code = collector.terminate()
    assert code == 0, collector.log()


@pytest.mark.parametrize("principal", [None, "streamer"])
def test_collector_with_wrong_credentials_exits_with_a_clear_error(
    tmp_path: Path, broker_factory: Callable[..., BrokerProcess], principal: str | None
) -> None:
    creds = Credentials(tmp_path / "creds")
    creds.add("streamer", "produce")
    topics = ["--topic", "telemetry:4", "--topic", "telemetry.dlq:2"]
    b = broker_factory(*topics, *creds.broker_args(), credentials=creds.channel_credentials())
    b.start()
    extra = ["--tls-ca", str(creds.ca_file)]
    if principal:
        extra += ["--token-file", str(creds.token_path(principal))]
    target = StoreTarget.sqlite(tmp_path / "telemetry.db")
    c = CollectorProcess(b.address, target, tmp_path / "collector.log", *extra)
    assert c.wait(60) == 1, c.log()
    expected = "permission denied: join consumer group" if principal else "authentication required"
    assert expected in c.log()

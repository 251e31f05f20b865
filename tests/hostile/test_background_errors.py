"""No background error is lost: a client whose loop dies says so, once, and stops.

Careless applications against a real broker: a producer whose encoder raises on one item
(inside the linger loop), a consumer whose assignment callback raises (inside the io loop),
a collector whose store fails in a way no retry fixes (inside its writer). Each time the
loop logs the error once with its name, whatever waits on it fails with `LoopCrashed`, and
well-behaved clients of the same broker lose nothing and keep their pace. A store that is
only unavailable (SQLite locked by another writer: a real failing dependency) is the other
case: the collector's writer survives, says so once, and recovers with nothing lost.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from collector.config import CollectorConfig
from collector.metrics import CollectorMetrics
from collector.runner import Collector
from store.base import PreparedWrite
from store.sqlite import SqliteStore
from tests.collector.helpers import StoreTarget, Telemetry, lag, wait_exact, wait_for
from tests.walbroker.helpers import drain, encode, item
from walbroker.consumer import Consumer
from walbroker.loops import LoopCrashed
from walbroker.producer import Producer

POISON = 7_777


def crashes(caplog: pytest.LogCaptureFixture, loop: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.getMessage() == "loop crashed" and getattr(r, "loop", "") == loop
    ]


def well_behaved(address: str, tag: int, n: int = 4_000) -> float:
    """Publish `n` items to topic `good` (acknowledged on return); the items per second."""
    started = time.perf_counter()
    with Producer(address, "good", encode, batch_size=200, linger_ms=5).start() as p:
        for i in range(n):
            p.send(str(i % 64), item(tag, i))
    return n / (time.perf_counter() - started)


def test_producer_linger_crash_fails_its_caller_not_others(broker, caplog) -> None:
    caplog.set_level(logging.INFO, logger="walbroker.loops")
    baseline = well_behaved(broker.address, 1)

    def careless_encode(items: list[int]) -> bytes:
        if POISON in items:
            raise ValueError(f"cannot encode item {POISON}")
        return encode(items)

    careless = Producer(broker.address, "careless", careless_encode, linger_ms=20).start()
    careless.send("k", 1)
    careless.send("k", POISON)  # the batch is not full: the linger loop seals and encodes it
    with pytest.raises(LoopCrashed) as raised:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # a dead loop must not leave send() blocking
            careless.send("k", 2, timeout_s=1)
            time.sleep(0.05)
    assert raised.value.loop == "producer-linger"
    assert "cannot encode item 7777" in str(raised.value)
    with pytest.raises(LoopCrashed):
        careless.flush(timeout_s=5)
    assert len(crashes(caplog, "producer-linger")) == 1  # logged once, with its name
    # The other loop was told to stop at the crash and ends its stream on its own; it
    # must be gone soon, not linger on (under load "soon" is not "at once").
    for t in careless._threads:
        t.join(10)
    assert not any(t.name.startswith("producer-") and t.is_alive() for t in careless._threads)

    after = well_behaved(broker.address, 2)
    assert after >= 0.5 * baseline, (baseline, after)
    seen, _ = drain(broker.address, "good", 8_000)
    assert set(seen.values()) == {1} and len(seen) == 8_000  # every item once, none lost


def test_consumer_io_crash_fails_poll_and_commit(broker, caplog) -> None:
    caplog.set_level(logging.INFO, logger="walbroker.loops")
    well_behaved(broker.address, 3)

    def boom(assignment: object) -> None:
        raise RuntimeError("application bug in on_assignment")

    careless = Consumer(broker.address, "careless", "good", on_assignment=boom).start()
    try:
        with pytest.raises(LoopCrashed) as raised:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # a dead loop must not leave poll() returning []
                careless.poll(0.2)
        assert raised.value.loop == "consumer-io"
        with pytest.raises(LoopCrashed):
            careless.commit({0: 1})
    finally:
        careless.close()
    assert len(crashes(caplog, "consumer-io")) == 1
    seen, _ = drain(broker.address, "good", 4_000, group="well-behaved")
    assert set(seen.values()) == {1} and len(seen) == 4_000


class BrokenDiskStore(SqliteStore):
    """A real SQLite store whose disk controller fails in a way no store error describes."""

    def write_prepared(self, prepared: PreparedWrite) -> None:
        raise OSError(5, "Input/output error (controller reset)")


def test_collector_writer_crash_stops_the_collector_with_nothing_committed(
    broker, caplog, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="walbroker.loops")
    data = Telemetry(broker.address)
    data.publish(range(10))
    config = CollectorConfig(broker=broker.address, store=f"sqlite:{tmp_path / 't.db'}")
    metrics = CollectorMetrics(CollectorRegistry())
    with BrokenDiskStore(tmp_path / "t.db") as store:
        collector = Collector(config, store, metrics)
        with pytest.raises(LoopCrashed) as raised:
            collector.run()  # gputel-collector exits 3 on it
    assert raised.value.loop == "collector-writer"
    assert len(crashes(caplog, "collector-writer")) == 1
    assert "collector-writer" not in {t.name for t in threading.enumerate()}
    assert sum(lag(broker.address).values()) == 10 * 4 * 8 * 3  # nothing was committed

    # A healthy collector then stores everything: nothing was lost.
    with SqliteStore(tmp_path / "t.db") as store:
        collector = Collector(config, store, CollectorMetrics(CollectorRegistry()))
        runner = threading.Thread(target=collector.run, name="test-collector")
        runner.start()
        try:
            assert wait_exact(store, data.expected(), 30) == data.expected()
        finally:
            collector.stop()
            runner.join(30)


def test_collector_survives_a_locked_store_and_recovers(broker, collectors, tmp_path) -> None:
    target = StoreTarget.sqlite(tmp_path / "telemetry.db")
    data = Telemetry(broker.address)
    c = collectors(target)
    data.publish(range(5))
    with target.open() as store:
        assert wait_exact(store, data.expected(), 30) == data.expected()
    conn = sqlite3.connect(tmp_path / "telemetry.db", isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")  # another writer holds the lock: writes fail
    try:
        data.publish(range(5, 15))
        # SQLite waits out its busy timeout before a write fails.
        assert wait_for(lambda: "flush failed; retrying" in c.log(), 90), c.log()
        assert c.proc.poll() is None  # the writer's failure killed nothing
        assert '"msg": "loop stopped", "loop": "collector-writer"' not in c.log()
    finally:
        conn.execute("COMMIT")
        conn.close()
    with target.open() as store:
        assert wait_exact(store, data.expected(), 60) == data.expected()
    c.wait_ready()
    assert wait_for(lambda: set(lag(broker.address).values()) == {0}, 10)
    log = c.log()
    assert log.count("flush failed; retrying with backoff") == 1
    assert '"loop": "collector-writer"' in log and "loop crashed" not in log
    assert c.terminate() == 0

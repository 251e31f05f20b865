"""The pipelined flush, in process: the loop prepares, the `collector-writer` thread writes and
commits. Real broker, real SQLite file, the real `Consumer` (recording its commits).

SQLite's own write lock is the lever: the test takes it with a second connection, so the
collector's write either waits in flight (long busy timeout) or fails with "database is
locked" (short one) for as long as the test wants, without touching the collector's code.
Every commit is recorded with the number of points the file held just before it was sent.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from collector.config import CollectorConfig
from collector.metrics import CollectorMetrics
from collector.runner import Collector
from gputel.transport.wal import WalConsumer
from store.sqlite import SqliteStore
from tests.collector.helpers import GROUP, TOPIC, Telemetry, lag, wait_for
from tests.fixtures.broker import BrokerProcess

BATCH = 480  # five ticks of the default data set (4 hosts x 8 GPUs x 3 metrics)


@dataclass(frozen=True)
class Commit:
    """One commit the collector sent: offsets, whether it waited, points stored just before."""

    offsets: dict[int, int]
    wait: bool
    stored: int


def stored_points(path: Path) -> int:
    """Points in the SQLite file, read through a connection of our own."""
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM points").fetchone()[0])


class CommitLog:
    """Commits of every collector of a test, in the order of their `stored` readings."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.commits: list[Commit] = []
        self._lock = threading.Lock()

    def record(self, offsets: dict[int, int], wait: bool) -> None:
        with self._lock:  # read and append together: `stored` grows along the list
            self.commits.append(Commit(dict(offsets), wait, stored_points(self.db)))


class RecordingConsumer(WalConsumer):
    """The real group consumer; every commit is recorded just before it is sent."""

    def __init__(self, address: str, log: CommitLog) -> None:
        super().__init__(address, GROUP, TOPIC, max_unacked_points=20_000, session_timeout_ms=3000)
        self.log = log

    def commit(
        self, offsets: dict[int, int] | None = None, timeout_s: float = 10.0, wait: bool = True
    ) -> bool:
        self.log.record(offsets or {}, wait)
        return super().commit(offsets, timeout_s, wait)


class Running:
    """A collector running `run()` on a thread of this process (`start()` starts it)."""

    def __init__(
        self, broker: BrokerProcess, log: CommitLog, busy_timeout_s: float,
        max_batch_points: int = 50_000,
    ) -> None:  # fmt: skip
        db = log.db
        config = CollectorConfig(
            broker=broker.address, store=f"sqlite:{db}", batch_size=BATCH, flush_ms=100,
            max_batch_points=max_batch_points, metrics_listen="", retry_initial_ms=20,
            retry_max_ms=200, shutdown_timeout_s=20,
        )  # fmt: skip
        self.registry = CollectorRegistry()
        self.store = SqliteStore(db, timeout_s=busy_timeout_s)
        consumer = RecordingConsumer(broker.address, log)
        self.collector = Collector(config, self.store, CollectorMetrics(self.registry), consumer)
        consumer.on_revoke = self.collector._on_revoke
        self.result: list[bool] = []
        # A daemon: a failed test must not leave the session waiting for a running collector.
        self.thread = threading.Thread(target=self._run, name="test-collector", daemon=True)

    def start(self) -> Running:
        self.thread.start()
        return self

    def _run(self) -> None:
        self.result.append(self.collector.run())

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def stop(self, timeout_s: float = 60) -> bool:
        self.collector.stop()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "collector did not stop"
        self.store.close()
        return self.result == [True]


@pytest.fixture
def collectors(broker: BrokerProcess) -> Iterator[Callable[..., Running]]:
    """Make in-process collectors (`collectors(log, busy_timeout_s[, max_batch_points])`)."""
    made: list[Running] = []

    def make(log: CommitLog, busy_timeout_s: float, max_batch_points: int = 50_000) -> Running:
        made.append(Running(broker, log, busy_timeout_s, max_batch_points))
        return made[-1]

    yield make
    for c in made:
        if c.thread.is_alive():
            c.collector.stop()
            c.thread.join(30)


@contextmanager
def write_lock(db: Path) -> Iterator[None]:
    """Hold SQLite's write lock on `db` (another writer waits for its busy timeout, then fails)."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("COMMIT")
        conn.close()


def check_commits(log: CommitLog) -> None:
    """Each commit came after the points below it were stored, and no offset went back."""
    committed: dict[int, int] = {}
    assert log.commits
    for commit in log.commits:
        for partition, offset in commit.offsets.items():
            assert offset >= committed.get(partition, 0), f"offset went back: {log.commits}"
            committed[partition] = offset
        # Offsets count points and every published point is distinct, so the points below
        # the committed offsets must all be in the file already.
        assert sum(committed.values()) <= commit.stored, f"committed before stored: {commit}"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "telemetry.db"
    SqliteStore(path).close()  # the tables exist before the test takes the lock
    return path


def written(log: CommitLog) -> list[int]:
    """Points of each write, from the points stored just before each commit that follows one."""
    # A waited-for commit follows a waited-for flush (here: at stop, with nothing left).
    stored = [c.stored for c in log.commits if not c.wait]
    return [b - a for a, b in zip([0, *stored], stored, strict=False)]


def test_write_in_flight_is_committed_only_after_the_store_acknowledged_it(broker, collectors, db):
    data = Telemetry(broker.address)
    data.publish(range(40))  # 3,840 points, 8 batches
    log = CommitLog(db)
    c = collectors(log, 60)
    with write_lock(db):
        c.start()  # its first write waits for the lock
        # The loop goes on while the writer waits: it receives and decodes the next batch.
        received = "gpu_telemetry_collector_messages_received_total"
        assert wait_for(lambda: c.metric(received) >= 2 * BATCH, 20)
        assert c.metric("gpu_telemetry_collector_messages_flushed_total") == 0
        assert log.commits == [] and sum(lag(broker.address).values()) == 3840
    assert wait_for(lambda: set(lag(broker.address).values()) == {0}, 30), lag(broker.address)
    assert c.stop()
    check_commits(log)
    with SqliteStore(db) as store:
        assert store.count_points() == data.expected()


def test_failed_writes_lose_no_batch_and_block_the_batches_behind(broker, collectors, db):
    data = Telemetry(broker.address)
    data.publish(range(40))
    log = CommitLog(db)
    c = collectors(log, 0.02)
    with write_lock(db):
        c.start()  # its writes fail at once
        assert wait_for(lambda: not c.collector.readiness()[0], 20)  # failures_before_unready
        errors = c.metric("gpu_telemetry_collector_write_errors_total", kind="unavailable")
        assert errors >= 3
        received = c.metric("gpu_telemetry_collector_messages_received_total")
        assert received >= 2 * BATCH  # a batch is prepared behind the failing one...
        assert log.commits == [] and sum(lag(broker.address).values()) == 3840  # nor committed
    assert wait_for(lambda: set(lag(broker.address).values()) == {0}, 30), lag(broker.address)
    assert c.collector.readiness()[0]
    assert c.metric("gpu_telemetry_collector_store_up") == 1
    assert c.stop()
    check_commits(log)
    with SqliteStore(db) as store:
        assert store.count_points() == data.expected()


def test_stop_finishes_the_write_in_flight_then_waits_for_the_commit(
    broker, collectors, db, caplog
):
    caplog.set_level(logging.INFO, logger="collector")
    caplog.set_level(logging.INFO, logger="walbroker.loops")  # every loop's start and stop
    data = Telemetry(broker.address)
    data.publish(range(40))
    log = CommitLog(db)
    c = collectors(log, 60)
    with write_lock(db):
        c.start()
        received = "gpu_telemetry_collector_messages_received_total"
        assert wait_for(lambda: c.metric(received) >= 2 * BATCH, 20)
        assert "collector-writer" in {t.name for t in threading.enumerate()}
        c.collector.stop()  # SIGTERM while a write waits for the lock
    assert c.stop()
    check_commits(log)
    assert log.commits[-1].wait  # the last commit was acknowledged by the broker before leaving
    with SqliteStore(db) as store:
        stored = sum(store.count_points().values())
    committed = 3840 - sum(lag(broker.address).values())
    assert committed == stored  # everything polled was stored and committed, no more
    assert stored >= 2 * BATCH
    writer_logs = [
        r.getMessage() for r in caplog.records if getattr(r, "loop", "") == "collector-writer"
    ]
    assert writer_logs == ["loop started", "loop stopped"]
    assert "collector-writer" not in {t.name for t in threading.enumerate()}


def test_revoke_mid_run_flushes_waits_and_releases_with_exact_counts(broker, collectors, db):
    data = Telemetry(broker.address)
    log = CommitLog(db)
    first = collectors(log, 30).start()
    join = data.in_background(range(300), pace_s=0.01)
    assert wait_for(lambda: first.metric("gpu_telemetry_collector_messages_flushed_total") > 0, 20)
    second = collectors(log, 30).start()  # takes partitions from the first
    assert wait_for(lambda: second.metric("gpu_telemetry_collector_messages_flushed_total") > 0, 30)
    join()
    assert wait_for(lambda: set(lag(broker.address).values()) == {0}, 30), lag(broker.address)
    assert first.stop() and second.stop()
    check_commits(log)
    with SqliteStore(db) as store:
        assert store.count_points() == data.expected()


def test_a_slow_writer_gets_everything_held_since_in_one_write_exactly_once(broker, collectors, db):
    data = Telemetry(broker.address)
    data.publish(range(40))  # 3,840 points in records of up to 200
    log = CommitLog(db)
    c = collectors(log, 60)
    received = "gpu_telemetry_collector_messages_received_total"
    with write_lock(db):
        c.start()  # its first write (about one batch) waits for the lock
        # The loop does not wait with a full batch: it takes every record while the writer
        # waits, far past `batch_size` (the backlog metric shows them held, not stored).
        assert wait_for(lambda: c.metric(received) == 3840, 20), c.metric(received)
        assert c.metric("gpu_telemetry_collector_backlog") == 3840
        assert log.commits == [] and sum(lag(broker.address).values()) == 3840
    assert wait_for(lambda: set(lag(broker.address).values()) == {0}, 30), lag(broker.address)
    assert c.stop()
    check_commits(log)
    sizes = written(log)
    # Two writes: the first batch, then everything received while it waited, in one write
    # (one transaction, one commit) instead of seven more of `batch_size`.
    assert len(sizes) == 2 and sizes[0] < 2 * BATCH and sum(sizes) == 3840, sizes
    with SqliteStore(db) as store:
        assert store.count_points() == data.expected()  # each point once
    assert c.metric("gpu_telemetry_collector_backlog") == 0


def test_the_loop_holds_at_most_max_batch_points_while_the_writer_waits(broker, collectors, db):
    data = Telemetry(broker.address)
    data.publish(range(40))
    log = CommitLog(db)
    most = 2 * BATCH
    c = collectors(log, 60, max_batch_points=most)
    received = "gpu_telemetry_collector_messages_received_total"
    record = data.batch_size  # points of the largest record
    with write_lock(db):
        c.start()
        # The first write (< BATCH + a record) waits; the loop then holds up to `most` points
        # (plus the record that crossed it) and stops polling: the broker keeps the rest.
        assert wait_for(lambda: c.metric(received) >= BATCH + most, 20), c.metric(received)
        time.sleep(1.0)  # time to take more records, if it did
        held = c.metric(received)
        assert held <= BATCH + record + most + record < 3840, held
        assert c.metric("gpu_telemetry_collector_backlog") == held
    assert wait_for(lambda: set(lag(broker.address).values()) == {0}, 30), lag(broker.address)
    assert c.stop()
    check_commits(log)
    sizes = written(log)
    assert sum(sizes) == 3840 and max(sizes) <= most + record, sizes
    assert max(sizes) > BATCH + record, sizes  # the batches behind the slow write merged
    with SqliteStore(db) as store:
        assert store.count_points() == data.expected()

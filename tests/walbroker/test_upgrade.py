"""Upgrade safety: a data directory written before producer progress had its own sub-database.

Such a directory keeps a streamer group's progress among the committed offsets
(sub-database `offsets`), and nothing on disk says which group is a producer
group. The broker marks those groups at open and moves a group's entries to
`progress` when a producer-group member joins it, so streamers resume where they
were (no duplicates after an upgrade) and consumer groups keep their offsets.
"""

from __future__ import annotations

import time
from pathlib import Path

import lmdb
import pytest

from tests.fixtures.broker import BrokerProcess
from walbroker import keys
from walbroker.admin_client import AdminClient
from walbroker.config import LogConfig
from walbroker.consumer import Consumer
from walbroker.errors import InvalidArgument
from walbroker.group import GroupCoordinator, MemberAssignment
from walbroker.log import Log
from walbroker.metrics import BrokerMetrics
from walbroker.types import TopicPartition as TP

STREAMER_PROGRESS = {0: 12_345, 1: 777}  # rows of the CSV each partition had sent
COLLECTOR_COMMITTED = {0: 0, 1: 0}  # log offsets (the old log is empty)


def write_old_layout(data_dir: Path) -> None:
    """The LMDB file as a broker before the `progress` sub-database left it (layout 1)."""
    path = data_dir / "log"
    path.mkdir(parents=True)
    env = lmdb.open(str(path), map_size=64 << 20, max_dbs=8, subdir=True)
    dbs = {
        n: env.open_db(n.encode())
        for n in ("topics", "parts", "records", "timeindex", "producers", "offsets")
    }
    now = time.time_ns()
    with env.begin(write=True) as txn:
        txn.put(b"telemetry", keys.pack_topic(2, now), db=dbs["topics"])
        for p in (0, 1):
            tp = TP("telemetry", p)
            txn.put(keys.partition_prefix(tp), keys.pack_partition(0, 0, 0, 0, 0), db=dbs["parts"])
            for group, table in (
                ("streamers", STREAMER_PROGRESS),
                ("collectors", COLLECTOR_COMMITTED),
            ):
                value = keys.pack_offset(table[p], now)
                txn.put(keys.group_key(group, tp), value, db=dbs["offsets"])
    env.close()


def assigned_positions(address: str, group: str, role: str) -> dict[int, int]:
    member = Consumer(address, group, "telemetry", role=role).start()  # type: ignore[arg-type]
    try:
        return dict(member.wait_for_assignment(30).positions)
    finally:
        member.close()


def describe(address: str, group: str) -> dict[int, tuple[int, int]]:
    """partition -> (committed or progress, lag in points) as `describe-group` shows them."""
    admin = AdminClient(address)
    try:
        resp = admin.describe_group(group)
        return {p.partition: (p.committed_offset, p.lag_points) for p in resp.partitions}
    finally:
        admin.close()


def test_a_streamer_resumes_where_it_was_after_an_upgrade(broker_factory):
    broker: BrokerProcess = broker_factory()
    write_old_layout(broker.data_dir)
    broker.start()
    broker.stop()
    broker.start()  # opening twice before anyone joins changes nothing (idempotent)

    assert assigned_positions(broker.address, "streamers", "producer") == STREAMER_PROGRESS
    # Its entries are progress now: shown without lag, and the consumer group is untouched.
    assert describe(broker.address, "streamers") == {
        p: (v, 0) for p, v in STREAMER_PROGRESS.items()
    }
    assert assigned_positions(broker.address, "collectors", "consumer") == COLLECTOR_COMMITTED

    broker.restart()  # kill -9: the move was one committed transaction
    assert assigned_positions(broker.address, "streamers", "producer") == STREAMER_PROGRESS
    assert assigned_positions(broker.address, "collectors", "consumer") == COLLECTOR_COMMITTED
    assert describe(broker.address, "streamers") == {
        p: (v, 0) for p, v in STREAMER_PROGRESS.items()
    }


def test_the_upgrade_runs_once_and_each_group_is_settled_by_what_joins_it(tmp_path):
    write_old_layout(tmp_path)
    wal = Log(LogConfig(tmp_path, retention_bytes=1 << 20))
    wal.start()
    try:
        assert wal.offsets.is_legacy("streamers") and wal.offsets.is_legacy("collectors")
        coordinator = GroupCoordinator(wal, BrokerMetrics())
        member = coordinator.join("collectors", "telemetry", "consumer", listener=lambda a: None)
        assert not wal.offsets.is_legacy("collectors")  # a consumer group keeps its offsets
        assert wal.offsets.committed("collectors", TP("telemetry", 1)) == 0
        assert wal.offsets.progress("collectors", TP("telemetry", 1)) is None
        coordinator.leave("collectors", member)
        wal.delete_group_offsets("streamers")  # deleting a legacy group drops its marker too
        assert not wal.offsets.is_legacy("streamers")
    finally:
        wal.close()
    wal = Log(LogConfig(tmp_path, retention_bytes=1 << 20))
    try:  # reopened: already at the current layout, nothing marked again
        assert wal.offsets.upgrade() == []
        assert not wal.offsets.is_legacy("streamers") and not wal.offsets.is_legacy("collectors")
        assert wal.offsets.committed("collectors", TP("telemetry", 0)) == 0
    finally:
        wal.close()


def test_a_producer_group_cannot_commit_offsets(tmp_path):
    wal = Log(LogConfig(tmp_path, retention_bytes=1 << 20))
    wal.start()
    try:
        wal.create_topic("telemetry", 2)
        coordinator = GroupCoordinator(wal, BrokerMetrics())
        got: list[MemberAssignment] = []
        member = coordinator.join("streamers", "telemetry", "producer", listener=got.append)
        with pytest.raises(InvalidArgument, match="producer group"):
            coordinator.commit("streamers", member, got[-1].generation, {0: 5})
        assert wal.offsets.committed("streamers", TP("telemetry", 0)) is None
    finally:
        wal.close()

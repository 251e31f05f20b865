"""Producer-group progress is a position in a source, not a log offset: it is stored apart from
committed offsets, survives restarts, and neither lag nor `block` retention ever reads it."""

from __future__ import annotations

import pytest

from walbroker.config import LogConfig
from walbroker.errors import ResourceExhausted
from walbroker.group import GroupCoordinator
from walbroker.lag import group_lags, producer_progress
from walbroker.log import Log
from walbroker.metrics import BrokerMetrics
from walbroker.ops import Fence
from walbroker.types import TopicPartition as TP


def open_log(path, **kw) -> Log:
    wal = Log(LogConfig(path, retention_bytes=4_000, **kw))
    wal.grants.grant("streamers", 0, 7)  # the grant every fenced batch below carries
    wal.start()
    wal.create_topic("t", 1)
    return wal


def test_progress_is_kept_apart_and_survives_a_restart(tmp_path):
    wal = open_log(tmp_path)
    wal.append(TP("t", 0), b"x" * 100, 10, "streamer-1", 0, Fence("streamers", 7, 12345)).result(5)
    assert wal.offsets.progress("streamers", TP("t", 0)) == 12345
    assert wal.offsets.committed("streamers", TP("t", 0)) is None
    wal.close()
    wal = open_log(tmp_path)
    try:
        assert wal.offsets.progress("streamers", TP("t", 0)) == 12345
        assert wal.offsets.committed("streamers", TP("t", 0)) is None
        coordinator = GroupCoordinator(wal, BrokerMetrics())
        assert [r.group for r in group_lags(wal, coordinator)] == []  # no lag from progress
        (row,) = producer_progress(wal, "streamers")
        assert (row.committed, row.lag_points) == (12345, 0)
    finally:
        wal.close()


def test_block_retention_never_waits_for_a_producer_group(tmp_path):
    wal = open_log(tmp_path)
    try:
        payload = b"p" * 900
        for seq in range(4):  # about 3,700 bytes of the 4,000-byte budget
            fence = Fence("streamers", 7, seq)  # progress 0..3: below every record's offsets
            wal.append(TP("t", 0), payload, 100, "streamer-1", seq, fence).result(5)
        with pytest.raises(ResourceExhausted):  # no consumer group has read anything yet
            wal.append(TP("t", 0), payload, 100).result(5)
        wal.commit_offsets("collectors", "t", {0: 400})  # the only consumer is caught up
        ack = wal.append(TP("t", 0), payload, 100).result(5)
        assert ack.base_offset == 400
        assert wal.state(TP("t", 0)).info().log_start_offset > 0
    finally:
        wal.close()

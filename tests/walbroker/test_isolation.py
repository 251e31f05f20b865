"""One operation that breaks the writer's transaction fails alone (the writer's second line of
defence behind request validation)."""

from __future__ import annotations

import pytest

from walbroker.config import LogConfig
from walbroker.errors import InvalidArgument
from walbroker.log import Log
from walbroker.types import TopicPartition as TP


@pytest.fixture
def wal(tmp_path):
    w = Log(LogConfig(tmp_path, default_partitions=2))
    w.start()
    w.create_topic("t", 2)
    yield w
    w.close()


def test_bad_key_in_a_group_commit_fails_only_its_own_batch(wal, caplog):
    # Hold LMDB's write lock so the writer waits and the appends below share one commit.
    blocker = wal.env.begin(write=True)
    first = wal.append(TP("t", 0), b"a" * 8, 1, "good-0", 0)
    goods = [wal.append(TP("t", i % 2), b"g" * 8, 1, f"good-{i}", 0) for i in range(1, 50)]
    # Log.append leaves identifiers to the server's validation: this key passes LMDB's limit.
    bad = wal.append(TP("t", 1), b"b" * 8, 1, "p" * 600, 0)
    goods += [wal.append(TP("t", i % 2), b"g" * 8, 1, f"good-{i}", 0) for i in range(50, 100)]
    blocker.abort()
    assert first.result(10).count == 1
    assert [f.result(10).count for f in goods] == [1] * 99
    with pytest.raises(InvalidArgument, match="cannot be stored"):
        bad.result(10)
    ends = [wal.state(TP("t", p)).info().log_end_offset for p in (0, 1)]
    assert sum(ends) == 100
    assert "group commit failed; retrying its operations one by one" in caplog.text

"""The LMDB log in-process: appends, reads, idempotence, time index, retention and restarts."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from walbroker.config import LogConfig
from walbroker.errors import InvalidArgument, NotFound, OutOfOrderSequence, ResourceExhausted
from walbroker.log import Log
from walbroker.types import TopicPartition as TP


def open_log(path: Path, **kw) -> Log:
    kw.setdefault("auto_create_topics", True)
    wal = Log(LogConfig(path, default_partitions=kw.pop("partitions", 2), **kw))
    wal.start()
    return wal


@pytest.fixture
def wal(tmp_path):
    w = open_log(tmp_path)
    yield w
    w.close()


def append(wal: Log, p: int, payload: bytes, count: int, pid: str = "", seq: int = 0):
    return wal.append(TP("t", p), payload, count, pid, seq).result(10)


def test_offsets_count_points_and_reads_resume_mid_record(wal):
    a = append(wal, 0, b"aaa", 3)
    b = append(wal, 0, b"bbbbb", 5)
    assert (a.base_offset, b.base_offset) == (0, 3)
    recs = wal.read(TP("t", 0), 4, 100)
    assert [(r.base_offset, r.count, r.payload) for r in recs] == [(3, 5, b"bbbbb")]
    assert wal.read(TP("t", 0), 8, 100) == []


def test_reads_from_lmdb_after_restart_match_hot_reads(tmp_path):
    wal = open_log(tmp_path, hot_buffer_bytes=10)
    for i in range(20):
        append(wal, 1, bytes([i]) * 4, 2)
    hot = wal.read(TP("t", 1), 7, 6)
    wal.close()
    wal = open_log(tmp_path)
    try:
        cold = wal.read(TP("t", 1), 7, 6)
        assert cold == hot
        assert [r.base_offset for r in cold] == [6, 8, 10]
        assert wal.state(TP("t", 1)).info().log_end_offset == 40
    finally:
        wal.close()


def test_producer_sequence_dedup_survives_restart(tmp_path):
    wal = open_log(tmp_path)
    first = append(wal, 0, b"x", 1, "p", 0)
    append(wal, 0, b"y", 1, "p", 1)
    wal.close()
    wal = open_log(tmp_path)
    try:
        again = append(wal, 0, b"x", 1, "p", 0)
        assert again.duplicate and again.base_offset == first.base_offset
        with pytest.raises(OutOfOrderSequence):
            append(wal, 0, b"z", 1, "p", 3)
        assert append(wal, 0, b"z", 1, "p", 2).base_offset == 2
        assert wal.state(TP("t", 0)).info().log_end_offset == 3
    finally:
        wal.close()


def test_time_index_finds_first_record_at_or_after(wal):
    acks = []
    for _ in range(5):
        acks.append(append(wal, 0, b"x" * 10, 10))
        time.sleep(0.002)
    tp = TP("t", 0)
    assert wal.offset_for_time(tp, 0) == 0
    assert wal.offset_for_time(tp, acks[2].publish_time_ns) == 20
    assert wal.offset_for_time(tp, acks[2].publish_time_ns + 1) == 30
    assert wal.offset_for_time(tp, acks[-1].publish_time_ns + 1) == 50


def test_bad_appends_are_refused(wal):
    with pytest.raises(InvalidArgument):
        append(wal, 5, b"x", 1)
    with pytest.raises(InvalidArgument):
        append(wal, 0, b"", 1)
    with pytest.raises(InvalidArgument):
        wal.append(TP("no spaces", 0), b"x", 1)
    with pytest.raises(NotFound):
        wal.state(TP("unknown", 0))


def test_block_policy_refuses_when_full_and_frees_consumed_records(tmp_path):
    wal = open_log(tmp_path, retention_bytes=600)
    try:
        for _ in range(4):
            append(wal, 0, b"x" * 100, 1)
        with pytest.raises(ResourceExhausted) as err:
            append(wal, 0, b"x" * 100, 1)
        assert err.value.retry_after_ms > 0
        wal.commit_offsets("g", "t", {0: 2})
        append(wal, 0, b"x" * 100, 1)  # room made by deleting consumed records only
        info = wal.state(TP("t", 0)).info()
        assert info.log_start_offset >= 1 and info.log_end_offset == 5
        assert wal.read(TP("t", 0), 0, 10)[0].base_offset == info.log_start_offset
    finally:
        wal.close()


def test_drop_oldest_deletes_and_counts(tmp_path):
    wal = open_log(tmp_path, retention_bytes=600, retention_policy="drop-oldest")
    try:
        for _ in range(10):
            append(wal, 0, b"x" * 100, 2)
        info = wal.state(TP("t", 0)).info()
        assert info.log_end_offset == 20
        deleted = wal.metrics.deleted.labels("t", "size")._value.get()
        assert deleted == info.log_start_offset > 0
        assert info.size_bytes <= 600
    finally:
        wal.close()


def test_age_retention(tmp_path):
    # Retention is asked as of a clock the test sets from the records' own publish times:
    # under load, wall-clock time between the append and the check would age "new" too.
    # The background loop (every retention_check_s) must not run meanwhile.
    wal = open_log(tmp_path, retention_age_s=0.05, retention_check_s=3600)
    try:
        append(wal, 0, b"old", 3)
        time.sleep(0.1)
        new = append(wal, 0, b"new", 2)
        age_ns = 50_000_000
        wal.enforce_retention(now_ns=new.publish_time_ns + age_ns)  # "new" is exactly 50 ms old
        info = wal.state(TP("t", 0)).info()
        assert (info.log_start_offset, info.log_end_offset) == (3, 5)
        assert wal.metrics.deleted.labels("t", "age")._value.get() == 3
        wal.enforce_retention(now_ns=new.publish_time_ns + age_ns + 1)  # 1 ns older: it goes
        info = wal.state(TP("t", 0)).info()
        assert (info.log_start_offset, info.log_end_offset) == (5, 5)
        assert wal.metrics.deleted.labels("t", "age")._value.get() == 5
    finally:
        wal.close()


class LogMachine(RuleBasedStateMachine):
    """Random appends, reads, commits, retention and restarts against a simple model."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        self.budget = 4_000
        self.wal = self._open()
        self.wal.ensure_topic("t")
        self.appended: dict[int, list[tuple[int, int, bytes]]] = {0: [], 1: [], 2: []}

    def _open(self) -> Log:
        return open_log(
            self.dir,
            partitions=3,
            retention_bytes=self.budget,
            retention_policy="drop-oldest",
            hot_buffer_bytes=300,
        )

    @rule(p=st.integers(0, 2), count=st.integers(1, 50), size=st.integers(1, 300))
    def append(self, p, count, size):
        count = min(count, size)  # a point takes at least one byte (--min-point-bytes)
        payload = bytes([len(self.appended[p]) % 256]) * size
        r = append(self.wal, p, payload, count)
        expected_base = sum(c for _, c, _ in self.appended[p])
        assert r.base_offset == expected_base
        self.appended[p].append((r.base_offset, count, payload))

    @rule()
    def restart(self):
        self.wal.close()
        self.wal = self._open()

    @precondition(lambda self: any(self.appended.values()))
    @rule(p=st.integers(0, 2), data=st.data())
    def read_from_anywhere(self, p, data):
        end = sum(c for _, c, _ in self.appended[p])
        offset = data.draw(st.integers(0, max(end, 0)))
        recs = self.wal.read(TP("t", p), offset, 10_000)
        start = self.wal.state(TP("t", p)).info().log_start_offset
        if offset >= end:
            assert recs == []
            return
        assert recs[0].base_offset <= max(offset, start) < recs[0].next_offset

    @invariant()
    def stored_records_are_a_contiguous_suffix(self):
        for p, appended in self.appended.items():
            recs = self.wal.read(TP("t", p), 0, 10**9)
            info = self.wal.state(TP("t", p)).info()
            suffix = appended[len(appended) - len(recs) :] if recs else []
            assert [(r.base_offset, r.count, r.payload) for r in recs] == suffix
            end = sum(c for _, c, _ in appended)
            assert info.log_end_offset == end
            assert info.log_start_offset == (recs[0].base_offset if recs else end)
        assert self.wal.total_bytes() <= self.budget

    def teardown(self):
        self.wal.close()
        shutil.rmtree(self.dir, ignore_errors=True)


TestLogMachine = LogMachine.TestCase
TestLogMachine.settings = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

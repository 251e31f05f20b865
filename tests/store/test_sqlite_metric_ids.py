"""SQLite keys points by metric id: a name-keyed file is converted on open, ids stay right."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

import pytest

from store import StoredPoint, StoreError, open_store
from store.sqlite import SqliteStore
from tests.store.helpers import T0, S, gpu, grid

UTIL, TEMP = "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP"

# The layout before metric ids (catalog columns included), as such a file holds it.
NAME_KEYED = """
CREATE TABLE gpus (id INTEGER PRIMARY KEY, uuid TEXT NOT NULL UNIQUE, hostname TEXT NOT NULL,
    gpu INTEGER NOT NULL, device TEXT NOT NULL, model TEXT NOT NULL, container TEXT NOT NULL,
    pod TEXT NOT NULL, namespace TEXT NOT NULL, shard INTEGER, first_seen_ns INTEGER,
    last_seen_ns INTEGER);
CREATE TABLE catalog_names (kind TEXT NOT NULL, shard INTEGER NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (kind, shard, name)) WITHOUT ROWID;
CREATE TABLE points (gpu_id INTEGER NOT NULL, time_ns INTEGER NOT NULL, metric TEXT NOT NULL,
    value REAL NOT NULL, source_time_ns INTEGER NOT NULL,
    PRIMARY KEY (gpu_id, time_ns, metric)) WITHOUT ROWID;
CREATE TABLE latest (gpu_id INTEGER NOT NULL, metric TEXT NOT NULL, time_ns INTEGER NOT NULL,
    value REAL NOT NULL, source_time_ns INTEGER NOT NULL,
    PRIMARY KEY (gpu_id, metric)) WITHOUT ROWID;
"""


def _columns(path: object, table: str) -> list[str]:
    with sqlite3.connect(str(path)) as conn:
        return [str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")]


def test_a_name_keyed_file_is_converted_on_open_and_reads_the_same(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(NAME_KEYED)
        conn.execute(
            "INSERT INTO gpus VALUES (1, 'GPU-old', 'node-a', 0, 'nvidia0', 'NVIDIA H100',"
            " '', '', '', NULL, NULL, NULL)"
        )
        points = [(1, T0 + i * S, m, float(i), T0) for i in range(3) for m in (UTIL, TEMP)]
        conn.executemany("INSERT INTO points VALUES (?, ?, ?, ?, ?)", points)
        conn.executemany(
            "INSERT INTO latest VALUES (1, ?, ?, 2.0, ?)",
            [(UTIL, T0 + 2 * S, T0), (TEMP, T0 + 2 * S, T0)],
        )
    with caplog.at_level(logging.WARNING, logger="store.sqlite_metrics"):
        store = SqliteStore(path)
    assert "converted to metric ids" in caplog.text
    try:
        assert "metric_id" in _columns(path, "points") and "metric" not in _columns(path, "points")
        assert "metric_id" in _columns(path, "latest")
        assert store.count_points() == {("GPU-old", UTIL): 3, ("GPU-old", TEMP): 3}
        assert store.query_raw("GPU-old", T0, T0 + 2 * S, None, 10) == [
            (t, m, v, s) for _, t, m, v, s in sorted(points, key=lambda p: (p[1], p[2]))
        ]
        assert store.query_points("GPU-old", T0, T0 + 2 * S, [TEMP], 1, (T0, TEMP)) == [
            StoredPoint(TEMP, T0 + S, 1.0, T0)
        ]
        assert store.latest("GPU-old") == {
            TEMP: StoredPoint(TEMP, T0 + 2 * S, 2.0, T0),
            UTIL: StoredPoint(UTIL, T0 + 2 * S, 2.0, T0),
        }
        assert store.backfill_catalog() == 1 and store.list_metrics() == sorted([UTIL, TEMP])
        store.write(grid([gpu(2)], [UTIL, "DCGM_FI_NEW"], [T0]))  # old and new names
        assert store.count_points(metric=UTIL) == {("GPU-old", UTIL): 3, (gpu(2).uuid, UTIL): 1}
        assert store.count_points(metric="DCGM_FI_NEW") == {(gpu(2).uuid, "DCGM_FI_NEW"): 1}
    finally:
        store.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="store.sqlite_metrics"):
        SqliteStore(path).close()  # converted once: a later open copies nothing
    assert "metric ids" not in caplog.text


def test_an_id_from_a_rolled_back_write_is_never_used(tmp_path) -> None:
    """A write that fails after naming a new metric forgets the id it saw: another process
    may commit that id for another name first, and the points must not go under it."""
    path = tmp_path / "t.db"
    first, second = SqliteStore(path), SqliteStore(path)  # two writers of one file
    try:
        first.write(grid([gpu(1)], [UTIL], [T0]))
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TABLE latest")  # the next write fails after its metric ids
        with pytest.raises(StoreError):
            first.write(grid([gpu(1)], [TEMP], [T0 + S]))
        SqliteStore(path).close()  # opening creates the table again
        second.write(grid([gpu(2)], ["DCGM_FI_OTHER"], [T0]))  # takes the id TEMP saw
        first.write(grid([gpu(1)], [TEMP], [T0 + S]))
        assert first.count_points() == {
            (gpu(1).uuid, UTIL): 1,
            (gpu(1).uuid, TEMP): 1,
            (gpu(2).uuid, "DCGM_FI_OTHER"): 1,
        }
        assert second.query_raw(gpu(1).uuid, T0, T0 + S, [TEMP], 10) == [(T0 + S, TEMP, 1.0, T0)]
    finally:
        first.close()
        second.close()


def test_a_metric_filter_naming_no_stored_metric_reads_nothing(tmp_path) -> None:
    with open_store(f"sqlite:{tmp_path / 't.db'}") as store:
        store.write(grid([gpu(1)], [UTIL], [T0]))
        assert store.query_points(gpu(1).uuid, T0, T0, ["DCGM_FI_NONE"]) == []
        assert store.latest_of([gpu(1).uuid], ["DCGM_FI_NONE"]) == {}
        assert store.downsample(gpu(1).uuid, T0, T0, ["DCGM_FI_NONE"], S, "mean") == []
        # a name first written by another process is found by this one's reads
        with open_store(f"sqlite:{tmp_path / 't.db'}") as other:
            other.write(grid([gpu(1)], ["DCGM_FI_LATER"], [T0]))
        assert [p.metric for p in store.query_points(gpu(1).uuid, T0, T0, ["DCGM_FI_LATER"])] == [
            "DCGM_FI_LATER"
        ]


def test_an_open_waits_for_another_process_holding_the_file_to_convert_it(tmp_path) -> None:
    """A conversion holds the write lock for as long as it copies (a minute for ten million
    points): a gateway opening the file meanwhile waits for it, not its 30 s busy timeout."""
    path = tmp_path / "t.db"
    SqliteStore(path).close()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # as a converting process does
    release = threading.Timer(2.0, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        started = time.monotonic()
        store = SqliteStore(path, timeout_s=0.5)  # its own writes give up after 0.5 s
        waited = time.monotonic() - started
    finally:
        release.join()
        holder.close()
    try:
        assert 1.5 < waited < 10, waited
        store.write(grid([gpu(1)], [UTIL], [T0]))
        assert store.count_points() == {(gpu(1).uuid, UTIL): 1}
    finally:
        store.close()

"""SQLite's write: a batch stored once, `latest` kept right, nothing left over from a failure."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import pytest

from store import InvalidBatch, StoredPoint, StoreError
from store.sqlite import STAGE_ROWS, SqliteStore
from tests.store.helpers import T0, S, batch, gpu, grid, on_threads

UTIL, TEMP = "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP"
POISON = 666.0  # a value the test's trigger refuses, failing a write inside its transaction


def test_a_failed_write_leaves_nothing_for_the_next_one(tmp_path) -> None:
    path = tmp_path / "t.db"
    store = SqliteStore(path)
    try:
        a, b = gpu(1), gpu(2)
        store.write(batch([(a, UTIL, T0, 1.0)]))
        with sqlite3.connect(path) as conn:
            conn.execute(
                f"CREATE TRIGGER poison BEFORE INSERT ON points WHEN NEW.value = {POISON}"
                " BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
            )
        with pytest.raises(StoreError):
            store.write(batch([(a, UTIL, T0 + S, 5.0), (b, TEMP, T0, POISON)]))
        store.write(batch([(b, UTIL, T0 + S, 2.0)]))
        assert store.count_points() == {(a.uuid, UTIL): 1, (b.uuid, UTIL): 1}
        assert store.latest(a.uuid) == {UTIL: StoredPoint(UTIL, T0, 1.0, T0 - S)}
        assert store.latest(b.uuid) == {UTIL: StoredPoint(UTIL, T0 + S, 2.0, T0)}
    finally:
        store.close()


def test_latest_across_and_within_batches(tmp_path) -> None:
    """A later time wins; at one time the later row (of one batch, or a later batch) wins."""
    store = SqliteStore(tmp_path / "t.db")
    try:
        g = gpu(3)
        store.write(batch([(g, UTIL, T0 + S, 1.0), (g, UTIL, T0 + S, 2.0), (g, UTIL, T0, 3.0)]))
        assert store.latest(g.uuid)[UTIL][1:3] == (T0 + S, 2.0)
        store.write(batch([(g, UTIL, T0, 4.0), (g, TEMP, T0, 5.0)]))  # older: UTIL stays
        assert store.latest(g.uuid)[UTIL][1:3] == (T0 + S, 2.0)
        store.write(batch([(g, UTIL, T0 + S, 6.0)]))  # a tie with the stored row: it wins
        assert store.latest(g.uuid) == {
            UTIL: StoredPoint(UTIL, T0 + S, 6.0, T0),
            TEMP: StoredPoint(TEMP, T0, 5.0, T0 - S),
        }
        assert store.count_points() == {(g.uuid, UTIL): 2, (g.uuid, TEMP): 1}
    finally:
        store.close()


def test_writers_on_several_threads_store_each_point_once(tmp_path) -> None:
    store = SqliteStore(tmp_path / "t.db")
    try:
        gpus = [gpu(n) for n in range(40)]
        times = [T0 + i * S for i in range(5)]

        def write(part: int) -> None:
            for t in times:
                store.write(grid(gpus[part::4], [UTIL, TEMP], [t]))

        on_threads(write, 4)
        counts = store.count_points()
        assert len(counts) == 80 and set(counts.values()) == {5}
        newest = store.latest_of([g.uuid for g in gpus])
        assert all(m[UTIL].time_ns == times[-1] for m in newest.values()) and len(newest) == 40
    finally:
        store.close()


@pytest.mark.parametrize(
    "bad",
    [
        {"uuid": ""},
        {"gpu": -1},
        {"gpu": 10**256},
        {"hostname": "h\x00"},
        {"model": "m" * 257},
        {"pod": "p\\"},
    ],
)
def test_new_gpus_are_checked_together_and_the_bad_one_is_refused(tmp_path, bad) -> None:
    store = SqliteStore(tmp_path / "t.db")
    try:
        good = [gpu(n) for n in range(50)]
        refused = replace(gpu(99), **bad)
        with pytest.raises(InvalidBatch):
            store.write(grid([*good[:20], refused, *good[20:]], [UTIL], [T0]))
        assert store.count_points() == {}
        store.write(grid(good, [UTIL], [T0]))  # the good ones alone: stored
        assert len(store.count_points()) == 50
        with pytest.raises(InvalidBatch):
            store.write(grid([*good, refused], [UTIL], [T0 + S]))  # refused after known ones
    finally:
        store.close()


@pytest.mark.parametrize("extra", [-1, 0, 1, STAGE_ROWS - 1, STAGE_ROWS + 1])
def test_every_point_of_a_batch_once_whatever_its_length(tmp_path, extra: int) -> None:
    """Rows are staged several to a statement: batch order holds across the statements."""
    store = SqliteStore(tmp_path / "t.db")
    try:
        gpus = [gpu(n) for n in range(STAGE_ROWS + extra)]
        points = [(g, UTIL, T0, float(n)) for n, g in enumerate(gpus)]
        points.append((gpus[0], UTIL, T0, -1.0))  # the same point again, in the last statement
        store.write(batch(points))
        counts = store.count_points()
        assert len(counts) == len(gpus) and set(counts.values()) == {1}
        newest = store.latest_of([g.uuid for g in gpus], [UTIL])
        assert newest[gpus[0].uuid][UTIL].value == -1.0  # the later row won
        assert [newest[g.uuid][UTIL].value for g in gpus[1:]] == list(range(1, len(gpus)))
        assert store.query_points(gpus[0].uuid, T0, T0)[0].value == -1.0
    finally:
        store.close()

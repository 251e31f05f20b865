"""Metric names as small integer ids in the SQLite store: the `metrics` table and its migration.

`points` and `latest` key their rows by `metric_id`, an id from `metrics(id, name)`, instead
of the metric's name. Every point is a B-tree entry keyed by (GPU, time, metric) and every
`latest` row by (GPU, metric), so the name (~20 bytes in a DCGM export) was in every key
compared and every row stored. With a one-byte id the same 80,000 samples a second (8,000
GPUs x 10 metrics, 5,000-point transactions) cost SQLite ~22 % less CPU and the file is a
third smaller (docs/benchmarks.md). Names are still what the API speaks: reads join
`metrics`, and pages are still ordered by (time, metric name).

A name's id is assigned in the write transaction that first stores one of its points and
never changes (rows of `metrics` are never deleted or renamed), so a pair that was
committed holds for good: `MetricIds` remembers it after COMMIT (a rolled-back write's new
ids are looked up again) and any number of processes can write the same file.

A file made with the name-keyed layout is converted on open (`migrate`), once, in one
transaction: the old tables are copied into the new layout and dropped. That is a full
copy (5.8 s for a million points on a 2-core machine); it is logged with its size and time.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence

from store.sqlite_catalog import ids_by_key

log = logging.getLogger(__name__)

METRICS_DDL = """
CREATE TABLE IF NOT EXISTS metrics (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)"""
POINTS_DDL = """
CREATE TABLE IF NOT EXISTS {name} (
    gpu_id INTEGER NOT NULL, time_ns INTEGER NOT NULL, metric_id INTEGER NOT NULL,
    value REAL NOT NULL, source_time_ns INTEGER NOT NULL,
    PRIMARY KEY (gpu_id, time_ns, metric_id)) WITHOUT ROWID"""
LATEST_DDL = """
CREATE TABLE IF NOT EXISTS {name} (
    gpu_id INTEGER NOT NULL, metric_id INTEGER NOT NULL, time_ns INTEGER NOT NULL,
    value REAL NOT NULL, source_time_ns INTEGER NOT NULL,
    PRIMARY KEY (gpu_id, metric_id)) WITHOUT ROWID"""
_INSERT_NAME = "INSERT OR IGNORE INTO metrics (name) VALUES (?)"
MAX_CACHED = 100_000  # names remembered; past it the cache starts again (slower, never wrong)


def create(conn: sqlite3.Connection) -> None:
    """Create the layout's tables in an empty file; convert a name-keyed one (`migrate`)."""
    conn.execute(METRICS_DDL)
    if _columns(conn, "points") and "metric" in _columns(conn, "points"):
        migrate(conn)
    conn.execute(POINTS_DDL.format(name="points"))
    conn.execute(LATEST_DDL.format(name="latest"))


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")}


def migrate(conn: sqlite3.Connection) -> None:
    """Convert name-keyed `points` and `latest` to metric ids, in the caller's transaction."""
    started = time.monotonic()
    (points,) = conn.execute("SELECT COUNT(*) FROM points").fetchone()
    log.warning(
        "converting the SQLite store to metric ids (one-off, a full copy of its points)",
        extra={"points": points},
    )
    conn.execute(
        "INSERT OR IGNORE INTO metrics (name) SELECT metric FROM"
        " (SELECT DISTINCT metric FROM points UNION SELECT DISTINCT metric FROM latest)"
        " ORDER BY metric"
    )
    for table, ddl, columns in (
        ("points", POINTS_DDL, "p.gpu_id, p.time_ns, m.id, p.value, p.source_time_ns"),
        ("latest", LATEST_DDL, "p.gpu_id, m.id, p.time_ns, p.value, p.source_time_ns"),
    ):
        conn.execute(ddl.format(name=f"{table}_by_id"))
        copied = conn.execute(
            f"INSERT INTO {table}_by_id SELECT {columns} FROM {table} p"
            " JOIN metrics m ON m.name = p.metric"
        ).rowcount
        (had,) = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        if copied != had:  # cannot happen: every name was inserted above
            raise sqlite3.DatabaseError(f"converting {table}: copied {copied} of {had} rows")
        conn.execute(f"DROP TABLE {table}")
        conn.execute(f"ALTER TABLE {table}_by_id RENAME TO {table}")
    log.warning(
        "SQLite store converted to metric ids",
        extra={"points": points, "elapsed_s": round(time.monotonic() - started, 3)},
    )


class MetricIds:
    """Metric name -> id of one store's file, remembered once committed (see the module doc).

    `ids` (in a write transaction) assigns ids to new names and returns the ones it learnt;
    `confirm` (after COMMIT) remembers them; `known` (reads) looks names up without writing.
    Thread-safe: the map is guarded by `_lock`.
    """

    def __init__(self, max_cached: int = MAX_CACHED) -> None:
        self._ids: dict[str, int] = {}
        self._max = max_cached
        self._lock = threading.Lock()

    def ids(
        self, conn: sqlite3.Connection, names: Sequence[str]
    ) -> tuple[list[int], dict[str, int]]:
        """Return the id of each name (assigned in `conn`'s transaction when new) and the
        pairs this call learnt (for `confirm`)."""
        with self._lock:
            got = list(map(self._ids.get, names))
        if None not in got:
            return [i for i in got if i is not None], {}
        missing = [n for n, i in zip(names, got, strict=True) if i is None]
        conn.executemany(_INSERT_NAME, [(n,) for n in missing])
        learnt = _select(conn, missing)
        return [learnt[n] if i is None else i for n, i in zip(names, got, strict=True)], learnt

    def confirm(self, learnt: dict[str, int]) -> None:
        """Remember pairs the file now holds (after COMMIT)."""
        if learnt:
            self._remember(learnt)

    def known(self, conn: sqlite3.Connection, names: Sequence[str]) -> list[int]:
        """Return the ids of those `names` the file has (a name without points has none)."""
        with self._lock:
            got = list(map(self._ids.get, names))
        missing = [n for n, i in zip(names, got, strict=True) if i is None]
        found = _select(conn, missing) if missing else {}
        if found:
            self._remember(found)  # committed: a read sees nothing else
        return [i for i in got if i is not None] + list(found.values())

    def _remember(self, pairs: dict[str, int]) -> None:
        with self._lock:
            if len(self._ids) + len(pairs) > self._max:
                self._ids.clear()
            self._ids.update(pairs)


def _select(conn: sqlite3.Connection, names: Sequence[str]) -> dict[str, int]:
    """The ids of those names `metrics` holds."""
    return ids_by_key(conn, "metrics", "name", names)

"""The SQLite store: the embedded default for single-machine runs (stdlib sqlite3, WAL mode).

Layout (same names as `store.schema`)::

    gpus(id INTEGER PK, uuid TEXT UNIQUE, hostname, gpu, device, model, container, pod, namespace,
         shard, first_seen_ns, last_seen_ns)                          -- also the GPU catalog
    catalog_names(kind, shard, name, PRIMARY KEY (kind, shard, name))  -- host, metric, model
    metrics(id INTEGER PK, name TEXT UNIQUE)
    points(gpu_id, time_ns, metric_id, value REAL, source_time_ns,
           PRIMARY KEY (gpu_id, time_ns, metric_id)) WITHOUT ROWID
    latest(gpu_id, metric_id, time_ns, value, source_time_ns, PRIMARY KEY (gpu_id, metric_id))

The primary key of `points` is the UNIQUE (gpu, time, metric) key that makes rewrites idempotent
(INSERT OR REPLACE: last write wins, as in InfluxDB) and the index that serves "one GPU, time
range, ordered by (time, metric)" and its keyset cursor: a page reads the key range from its
bound or cursor and sorts only the few points of one time by metric name (`metrics` maps the
small integer ids the keys hold to names: `store.sqlite_metrics`, which also converts a file
made with names in the keys). `gpus` holds each GPU's newest
descriptor and, as the GPU catalog (`store.catalog`), its shard and first and last point time;
`latest` the newest point per (GPU, metric); all kept up to date by `write` in the points' own
transaction (`store.sqlite_catalog.GpuRows` makes only the upserts the catalog needs:
`last_seen` lags by less than the catalog granularity, exact by default, the collector's
`--catalog-granularity-s` when it writes). Catalog pages are index range scans on (shard, uuid)
and (kind, shard, name): their cost follows the page, not the fleet or the history. A file
made before the catalog existed gets the new columns on open; `backfill_catalog` fills them.
Durability: WAL with synchronous=FULL (the default): a commit is on disk when it returns, as the
broker's `--fsync always`, so the offsets the collector commits after it never run ahead of what
a power loss would keep. `synchronous="normal"` (the collector's `--sqlite-synchronous normal`)
survives a process crash (kill -9), not an OS crash or power loss; it saves one WAL fsync per
commit (~0.7 ms here).

Pages: a new file gets 16 KiB pages (SQLite's default is 4 KiB; an existing file keeps its
own) and a connection that writes a 64 MiB page cache (readers keep the 2 MiB default). Rows
land all over the `points`, `latest` and `gpus` indexes (they are keyed by GPU, and a batch
holds many GPUs), so every commit rewrites many pages into the WAL, one frame each: with
bigger pages and a cache that holds the indexes the store's write CPU fell by ~20 % on an
import (docs/benchmarks.md). The same pages are read, so durability is unchanged.

Every connection reads the file through a memory map (`MMAP_SIZE_BYTES`). Rows are keyed by
GPU, so a live fleet adds to every GPU's last page of `points` each second: 8,000 GPUs are
8,000 pages, 125 MiB, more than the writer's cache, and once the file is that large most
inserts miss the cache. Read through the map, a miss costs a memory access instead of a
system call and a copy: scraping 1,000 targets x 80 samples/s, the freshness p99 was
1.04-1.85 s in three runs against 1.60-2.26 s without it (docs/benchmarks.md). Writes still
go through the WAL; the map only serves reads, so durability is unchanged.

Staging: a write binds its points once, into the writing connection's own in-memory
`temp.batch` (a TEMP table: private to the connection, never in the file), and moves them
into `points` and `latest` with one INSERT … SELECT each, in batch order, in the same
transaction; binding a row from Python cost as much as SQLite's b-tree work for it, and
it used to be paid for both tables (docs/benchmarks.md). A rolled-back write empties it.

Threads: one connection per thread (created on first use, all closed by `close()`); SQLite's
WAL lets readers run while one writer writes, and `busy_timeout` makes writers queue.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from proto.batch import PointBatch
from store import catalog, schema, sqlite_catalog, sqlite_metrics, validate
from store.base import (
    Aggregate,
    GpuSummary,
    InvalidArgument,
    PreparedWrite,
    RawPoint,
    Store,
    StoredPoint,
    StoreError,
    StoreUnavailable,
    WindowValue,
    newest_bound_ns,
)

DDL = """
CREATE TABLE IF NOT EXISTS gpus (
    id INTEGER PRIMARY KEY, uuid TEXT NOT NULL UNIQUE, hostname TEXT NOT NULL,
    gpu INTEGER NOT NULL, device TEXT NOT NULL, model TEXT NOT NULL,
    container TEXT NOT NULL, pod TEXT NOT NULL, namespace TEXT NOT NULL)
"""

# Staging (see the module doc): created once per writing connection, outside a transaction.
_STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS batch (gpu_id INTEGER NOT NULL, time_ns INTEGER NOT NULL,
    metric_id INTEGER NOT NULL, value REAL NOT NULL, source_time_ns INTEGER NOT NULL)"""
_STAGE = "INSERT INTO temp.batch VALUES (?, ?, ?, ?, ?)"
# Rows staged per statement: a statement run per row was half of staging's CPU. 500
# variables a statement, under every SQLite's limit (999 before 3.32).
STAGE_ROWS = 100
_STAGE_MANY = "INSERT INTO temp.batch VALUES " + ", ".join(["(?, ?, ?, ?, ?)"] * STAGE_ROWS)
_STAGED_POINTS = "INSERT OR REPLACE INTO points SELECT * FROM temp.batch ORDER BY rowid"
# Rows in batch order, each one an upsert: a later time wins, a tie goes to the later row
# (also between two rows of the same batch: the second sees the first one's row). `WHERE
# true` tells the parser that ON CONFLICT is the upsert's, not a join's.
_STAGED_LATEST = """
INSERT INTO latest (gpu_id, time_ns, metric_id, value, source_time_ns)
SELECT * FROM temp.batch WHERE true ORDER BY rowid
ON CONFLICT (gpu_id, metric_id) DO UPDATE SET time_ns = excluded.time_ns, value = excluded.value,
    source_time_ns = excluded.source_time_ns WHERE excluded.time_ns >= latest.time_ns"""
_UNSTAGE = "DELETE FROM temp.batch"

_SUMMARY = """
SELECT g.uuid, g.hostname, g.gpu, g.device, g.model, g.first_seen_ns, g.last_seen_ns,
    g.container, g.pod, g.namespace
FROM gpus g WHERE g.first_seen_ns IS NOT NULL"""

# The newest point of a metric at or before a bound (when `latest` holds a future one).
_NEWEST_BEFORE = """
SELECT time_ns, value, source_time_ns FROM points
WHERE gpu_id = ? AND metric_id = ? AND time_ns <= ? ORDER BY time_ns DESC LIMIT 1"""

OPEN_WAIT_S = 600.0  # the longest an open waits for another process's conversion of the file
SYNCHRONOUS = ("full", "normal")  # SQLite's synchronous settings offered (see the module doc)
PAGE_SIZE_BYTES = 16_384  # takes effect on a new, empty file only
WRITER_CACHE_KIB = 65_536
# Pages are read through a memory map (SQLite caps it at its compile-time maximum, 2 GiB less
# 64 KiB in CPython's builds): once the file outgrows the page cache, a miss is a memory read,
# not a pread copy (see the module doc).
MMAP_SIZE_BYTES = 2 * 1024**3

_AGG_SQL = {"mean": "AVG(value)", "min": "MIN(value)", "max": "MAX(value)", "last": "value"}


class SqliteStore(Store):
    """Telemetry in one SQLite file; safe to share between threads (one connection per thread)."""

    def __init__(
        self,
        path: str | Path,
        timeout_s: float = 30.0,
        catalog: bool = True,
        catalog_granularity_ns: int = 1,
        synchronous: str = "full",
    ) -> None:
        if synchronous not in SYNCHRONOUS:
            raise InvalidArgument(f"synchronous must be one of {', '.join(SYNCHRONOUS)}")
        self.path = str(path)
        self._synchronous = synchronous
        self._timeout_s = timeout_s
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        # catalog=False only to measure what the catalog costs (bench); 1 ns: exact last_seen.
        self._gpu_rows = sqlite_catalog.GpuRows(catalog_granularity_ns, catalog)
        self._checked: set[schema.GpuFields] = set()  # descriptors that passed check_batch
        self._metrics = sqlite_metrics.MetricIds()
        # Opening waits up to OPEN_WAIT_S for the write lock, not `timeout_s`: another process
        # may be converting the file (`store.sqlite_metrics`, a full copy under the lock).
        self._conn().execute(f"PRAGMA busy_timeout={int(OPEN_WAIT_S * 1000)}")
        try:
            with self._tx() as conn:
                conn.execute(DDL)
                sqlite_metrics.create(conn)
                sqlite_catalog.migrate(conn)
        finally:
            self._conn().execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")

    def _conn(self) -> sqlite3.Connection:
        """Return this thread's connection, opening it on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise StoreError("store is closed")
        try:
            conn = sqlite3.connect(
                self.path, timeout=self._timeout_s, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA page_size={PAGE_SIZE_BYTES}")  # before WAL fixes the size
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
            conn.execute(f"PRAGMA mmap_size={MMAP_SIZE_BYTES}")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self.path}: {exc}") from exc
        self._local.conn = conn
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """Run a block in one write transaction, translating sqlite errors."""
        conn = self._conn()
        try:
            if not getattr(self._local, "writes", False):  # this thread's first write
                conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
                conn.execute("PRAGMA temp_store=MEMORY")
                conn.execute(_STAGE_DDL)  # outside a transaction: a rollback cannot drop it
                self._local.writes = True
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite write failed: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc

    def _read(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Run one query and return all rows, translating sqlite errors."""
        with _reading():
            return self._conn().execute(sql, args).fetchall()

    def _metric_filter(self, names: list[str] | None) -> tuple[str, list[int]] | None:
        """The `AND p.metric_id IN (…)` clause and arguments of validated metric `names`:
        ("", []) without a filter, None when it names no metric the file holds."""
        if not names:
            return "", []
        ids = self._metric_ids(names)
        if not ids:
            return None
        return f" AND p.metric_id IN ({','.join('?' * len(ids))})", ids

    def _metric_ids(self, names: list[str]) -> list[int]:
        """The ids of those metric `names` the file holds (a read; see `store.sqlite_metrics`)."""
        with _reading():
            return self._metrics.known(self._conn(), names)

    def write(self, batch: PointBatch) -> None:
        """Persist every point of `batch`; the same (uuid, metric, time_ns) twice is one point."""
        self.write_prepared(self.prepare(batch))

    def prepare(self, batch: PointBatch, parts: Sequence[PointBatch] = ()) -> PreparedWrite:
        """Validate `batch` and decide its catalog records (no I/O; any thread)."""
        if not len(batch):
            return PreparedWrite(batch, None, catalog.NO_UPDATE)
        if len(self._checked) > catalog.MAX_TRACKED:
            self._checked.clear()
        schema.check_batch(batch, self._checked)
        return PreparedWrite(batch, None, self._gpu_rows.update(batch, parts))

    def write_prepared(self, prepared: PreparedWrite) -> None:
        """Write a prepared batch in one transaction: GPU rows, points, latest, names."""
        if prepared.catalog is None:
            prepared = self.prepare(prepared.batch)
        batch, update = prepared.batch, prepared.catalog or catalog.NO_UPDATE
        if not len(batch):
            return
        with self._tx() as conn:
            ids, learnt = self._gpu_rows.ids(conn, batch, update)
            metric_ids, new_metrics = self._metrics.ids(conn, batch.metrics)
            _stage(conn, batch, ids, metric_ids)
            conn.execute(_STAGED_POINTS)
            conn.execute(_STAGED_LATEST)
            conn.execute(_UNSTAGE)  # (a rollback empties it too)
            conn.executemany(sqlite_catalog.INSERT_NAMES, self._gpu_rows.names(update))
        self._gpu_rows.confirm(learnt, update)
        self._metrics.confirm(new_metrics)

    def _summaries(self, where: str, args: Sequence[object], limit: int) -> list[GpuSummary]:
        sql = f"{_SUMMARY} {where} ORDER BY g.shard, g.uuid LIMIT ?"
        return [sqlite_catalog.summary(row) for row in self._read(sql, [*args, limit])]

    def list_gpus(
        self,
        hostname: str | None = None,
        model: str | None = None,
        limit: int = 100,
        after_uuid: str | None = None,
    ) -> list[GpuSummary]:
        """Return up to `limit` GPUs with data in catalog order, only those after `after_uuid`."""
        needle = validate.optional_text("model", model)
        models = None
        if needle is not None:
            models = catalog.matching_models(self._all_names("model"), needle)
            if not models:
                return []
        where, args = sqlite_catalog.gpu_filter(
            validate.optional_text("hostname", hostname),
            models,
            validate.optional_text("after_uuid", after_uuid),
        )
        return self._summaries(where, args, validate.positive("limit", limit))

    def get_gpu(self, uuid: str) -> GpuSummary | None:
        """Return the GPU with this uuid, or None when it has no data."""
        found = self._summaries(" AND g.uuid = ?", [validate.text("uuid", uuid)], 1)
        return found[0] if found else None

    def gpus_by_index(self, index: int, limit: int | None = None) -> list[GpuSummary]:
        """Return GPUs (on any host) whose host-local index is `index`, in catalog order."""
        most = -1 if limit is None else validate.positive("limit", limit)
        return self._summaries(" AND g.gpu = ?", [validate.index(index)], most)

    def page_names(self, kind: str, limit: int = 1000, after: str | None = None) -> list[str]:
        """Return up to `limit` names of one kind with data, after `after`, in catalog order."""
        if kind not in catalog.NAME_KINDS:
            raise InvalidArgument(f"kind must be one of {', '.join(catalog.NAME_KINDS)}")
        start = validate.optional_text("after", after)
        limit = validate.positive("limit", limit)
        return [str(r[0]) for r in self._read(*sqlite_catalog.names_query(kind, limit, start))]

    def backfill_catalog(self) -> int:
        """Build the catalog from the stored points (one-off; O(data)); return GPUs found."""
        with self._tx() as conn:
            sqlite_catalog.backfill(conn)
        return len(self._summaries("", [], -1))

    def query_points(
        self,
        uuid: str,
        start_ns: int,
        end_ns: int,
        metrics: Sequence[str] | None = None,
        limit: int = 1000,
        after: tuple[int, str] | None = None,
    ) -> list[StoredPoint]:
        """Return up to `limit` points with start_ns <= time_ns <= end_ns (both inclusive).

        Points are ordered by (time_ns, metric); with `after` = (time_ns, metric), a keyset
        cursor, only points after it are returned, so paging is stable while new data arrives.
        """
        columns = "m.name, p.time_ns, p.value, p.source_time_ns"
        rows = self._points(columns, uuid, start_ns, end_ns, metrics, limit, after)
        return list(map(StoredPoint._make, rows))  # column types are fixed by the schema

    def query_raw(
        self,
        uuid: str,
        start_ns: int,
        end_ns: int,
        metrics: Sequence[str] | None = None,
        limit: int = 1000,
        after: tuple[int, str] | None = None,
    ) -> list[RawPoint]:
        """Return what `query_points` returns, as (time_ns, metric, value, source_time_ns)."""
        columns = "p.time_ns, m.name, p.value, p.source_time_ns"
        return self._points(columns, uuid, start_ns, end_ns, metrics, limit, after)

    def latest_of(
        self, uuids: Sequence[str], metrics: Sequence[str] | None = None
    ) -> dict[str, dict[str, StoredPoint]]:
        """Return the newest point of `metrics` (all when None) of each GPU in `uuids`.

        The page's rows of `latest`: one `gpus` lookup by uuid and one `latest` range per GPU
        (or one row per metric), the lists bound as JSON arrays (no cap on their length).
        """
        sql = (
            "SELECT g.uuid, l.gpu_id, l.metric_id, m.name, l.time_ns, l.value, l.source_time_ns"
            " FROM gpus g JOIN latest l ON l.gpu_id = g.id JOIN metrics m ON m.id = l.metric_id"
            " WHERE g.uuid IN (SELECT value FROM json_each(?))"
        )
        args = [json.dumps(validate.uuids(uuids))]
        names = validate.metrics(metrics)
        if names:
            ids = self._metric_ids(names)
            if not ids:
                return {}
            sql += " AND l.metric_id IN (SELECT value FROM json_each(?))"
            args.append(json.dumps(ids))
        bound = newest_bound_ns()
        out: dict[str, dict[str, StoredPoint]] = {}
        for uuid, gpu_id, metric_id, m, t, v, s in self._read(sql, args):
            if t > bound:  # a point from the future: the newest one before the bound instead
                before = self._read(_NEWEST_BEFORE, [gpu_id, metric_id, bound])
                if not before:
                    continue
                t, v, s = before[0]
            out.setdefault(str(uuid), {})[str(m)] = StoredPoint(str(m), int(t), float(v), int(s))
        return out

    def _points(
        self,
        columns: str,
        uuid: str,
        start_ns: int,
        end_ns: int,
        metrics: Sequence[str] | None,
        limit: int,
        after: tuple[int, str] | None,
    ) -> list[tuple[Any, ...]]:
        """Select `columns` of one GPU's points (`p`, names `m`) in (time, metric name) order.

        A range scan of the primary key (gpu_id, time_ns, metric_id) from the bound or the
        cursor, the points of one time sorted by name: the cost follows the page, never the
        GPU's history.
        """
        start, end = validate.time_range(start_ns, end_ns)
        sql = (
            f"SELECT {columns} FROM points p JOIN gpus g ON g.id = p.gpu_id"
            " JOIN metrics m ON m.id = p.metric_id"
            " WHERE g.uuid = ? AND p.time_ns BETWEEN ? AND ?"
        )
        args: list[object] = [validate.text("uuid", uuid), start, end]
        names = validate.metrics(metrics)
        cursor = validate.cursor(after)
        most = validate.positive("limit", limit)
        found = self._metric_filter(names)
        if found is None:
            return []
        sql += found[0]
        args += found[1]
        if cursor:
            sql += " AND p.time_ns >= ? AND (p.time_ns > ? OR m.name > ?)"
            args += [cursor[0], cursor[0], cursor[1]]
        return self._read(sql + " ORDER BY p.time_ns, m.name LIMIT ?", [*args, most])

    def downsample(
        self,
        uuid: str,
        start_ns: int,
        end_ns: int,
        metrics: Sequence[str] | None,
        every_ns: int,
        agg: Aggregate,
    ) -> list[WindowValue]:
        """Aggregate points in [start_ns, end_ns] into epoch-aligned windows of `every_ns`,
        ordered by (time_ns, metric); empty windows are omitted."""
        start, end = validate.time_range(start_ns, end_ns)
        every = validate.positive("every_ns", every_ns, validate.MAX_NS)
        value = _AGG_SQL[validate.aggregate(agg)]
        # `last`: SQLite takes bare columns from the row holding MAX(time_ns).
        sql = (
            f"SELECT p.time_ns / ? * ? AS w, m.name, {value}, MAX(p.time_ns) FROM points p"
            " JOIN gpus g ON g.id = p.gpu_id JOIN metrics m ON m.id = p.metric_id"
            " WHERE g.uuid = ? AND p.time_ns BETWEEN ? AND ?"
        )
        args: list[object] = [every, every, validate.text("uuid", uuid), start, end]
        found = self._metric_filter(validate.metrics(metrics))
        if found is None:
            return []
        sql += found[0]
        args += found[1]
        rows = self._read(sql + " GROUP BY w, p.metric_id ORDER BY w, m.name", args)
        return [WindowValue(str(m), int(w), float(v)) for w, m, v, _ in rows]

    def count_points(
        self, uuid: str | None = None, metric: str | None = None
    ) -> dict[tuple[str, str], int]:
        """Return the exact number of stored points per (uuid, metric), optionally filtered."""
        sql = (
            "SELECT g.uuid, m.name, COUNT(*) FROM points p JOIN gpus g ON g.id = p.gpu_id"
            " JOIN metrics m ON m.id = p.metric_id"
        )
        clauses, args = [], []
        if uuid is not None:
            clauses.append("g.uuid = ?")
            args.append(validate.text("uuid", uuid))
        if metric is not None:
            clauses.append("m.name = ?")
            args.append(validate.text("metric", metric))
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        rows = self._read(sql + " GROUP BY g.uuid, p.metric_id", args)
        return {(str(u), str(m)): int(n) for u, m, n in rows}

    def ping(self) -> None:
        """Return when the store answers; raise StoreUnavailable when it does not."""
        self._read("SELECT 1")

    def close(self) -> None:
        """Release connections; the store must not be used afterwards."""
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()


@contextmanager
def _reading() -> Iterator[None]:
    """Translate sqlite errors of a read."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise StoreUnavailable(f"SQLite query failed: {exc}") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"SQLite query failed: {exc}") from exc


def _stage(
    conn: sqlite3.Connection, batch: PointBatch, ids: list[int], metric_ids: list[int]
) -> None:
    """Insert the `points` rows of `batch` into `temp.batch` in batch order, given each of
    its GPUs' row id and its metrics' ids.

    The rows' values are laid out flat, a column at a time into every fifth slot (C-level;
    a Python loop per point was a third of the store's own CPU per point, and per-row
    tuples cost twice this), then bound STAGE_ROWS rows a statement, the last few one by
    one. A column of another length than `time_ns` raises ValueError.
    """
    flat: list[object] = [None] * (5 * len(batch.time_ns))
    flat[0::5] = list(map(ids.__getitem__, batch.gpu_index))
    flat[1::5] = batch.time_ns
    flat[2::5] = list(map(metric_ids.__getitem__, batch.metric_index))
    flat[3::5] = batch.value
    flat[4::5] = batch.source_time_ns
    step = 5 * STAGE_ROWS
    whole = len(flat) - len(flat) % step  # the values of the whole statements
    conn.executemany(_STAGE_MANY, [flat[i : i + step] for i in range(0, whole, step)])
    conn.executemany(_STAGE, [flat[i : i + 5] for i in range(whole, len(flat), 5)])

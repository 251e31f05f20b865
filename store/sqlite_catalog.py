"""The GPU catalog in the SQLite store: its tables, their migration, the catalog queries, and
the write path that keeps `gpus` up to date (`GpuRows`).

The catalog is the `gpus` table's shard, first_seen_ns and last_seen_ns columns (written in
the points' transaction) plus `catalog_names` (hostnames, metrics, models). Pages are index
range scans on (shard, uuid) and (kind, shard, name), so their cost follows the page, never
the fleet or the history (see `store.catalog`).

Why `GpuRows`: a real export or a large fleet puts ~one point of each GPU in a batch, so an
upsert per GPU per batch cost more than the points (64 us a GPU against 7 us a point). A GPU's
row is now upserted only when the catalog needs it (`store.catalog.CatalogTracker`: new to
this process, descriptor changed, span widened by at least the granularity), all of a batch's
upserts in one `executemany`, and the row ids (stable: rows are never deleted) are remembered.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Any, cast

from proto.batch import PointBatch
from store import catalog, schema
from store.base import GpuSummary, newest_bound_ns

NAMES_DDL = """
CREATE TABLE IF NOT EXISTS catalog_names (
    kind TEXT NOT NULL, shard INTEGER NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (kind, shard, name)) WITHOUT ROWID"""

# Added by the catalog; ALTERed into files made before it (NULL until backfilled).
CATALOG_COLUMNS = ("shard", "first_seen_ns", "last_seen_ns")
CATALOG_INDEXES = """
DROP INDEX IF EXISTS gpus_by_index;
CREATE INDEX IF NOT EXISTS gpus_by_key ON gpus (shard, uuid);
CREATE INDEX IF NOT EXISTS gpus_by_host ON gpus (hostname, shard, uuid);
CREATE INDEX IF NOT EXISTS gpus_by_model ON gpus (model, shard, uuid);
CREATE INDEX IF NOT EXISTS gpus_by_gpu_index ON gpus (gpu, shard, uuid)
"""
INSERT_NAMES = "INSERT OR IGNORE INTO catalog_names VALUES (?, ?, ?)"

# NULL-safe span merge: a row written without a span (a GPU whose points are all in the
# future) keeps the span it has; plain MIN/MAX would turn it into NULL. The descriptor is
# the newest point's (`store.catalog`): a write whose span ends before the row's keeps the
# row's, and so does one without a span (another writer may know newer points).
_NEWER = "excluded.last_seen_ns >= COALESCE(last_seen_ns, excluded.last_seen_ns)"
_DESCRIPTOR = ("hostname", "gpu", "device", "model", "container", "pod", "namespace")
UPSERT_GPU = f"""
INSERT INTO gpus (uuid, hostname, gpu, device, model, container, pod, namespace,
    shard, first_seen_ns, last_seen_ns)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (uuid) DO UPDATE SET {
    ", ".join(f"{c} = CASE WHEN {_NEWER} THEN excluded.{c} ELSE {c} END" for c in _DESCRIPTOR)
}, shard = excluded.shard,
    first_seen_ns = COALESCE(MIN(first_seen_ns, excluded.first_seen_ns), first_seen_ns,
        excluded.first_seen_ns),
    last_seen_ns = COALESCE(MAX(last_seen_ns, excluded.last_seen_ns), last_seen_ns,
        excluded.last_seen_ns)"""
# A later last_seen alone (`GpuRecord.seen_only`) where the row still holds this writer's
# descriptor: it sets no indexed column, so SQLite leaves the four indexes of `gpus` alone,
# where the upsert rewrites their entries.
UPDATE_LAST_SEEN = """
UPDATE gpus SET last_seen_ns = MAX(last_seen_ns, ?) WHERE id = ? AND last_seen_ns IS NOT NULL
    AND (uuid, hostname, gpu, device, model, container, pod, namespace)
        = (?, ?, ?, ?, ?, ?, ?, ?)"""
_ID_CHUNK = 500  # uuids per id lookup (well under SQLite's bound on parameters)

_BACKFILL_GPU = """
UPDATE gpus SET shard = ?,
    first_seen_ns = (SELECT MIN(time_ns) FROM points p WHERE p.gpu_id = gpus.id AND p.time_ns <= ?),
    last_seen_ns = (SELECT MAX(time_ns) FROM points p WHERE p.gpu_id = gpus.id AND p.time_ns <= ?)
WHERE id = ?"""

NameRow = tuple[str, int, str]


def migrate(conn: sqlite3.Connection) -> None:
    """Create the catalog's table and indexes; add its columns to an older `gpus` table."""
    conn.execute(NAMES_DDL)
    have = {row[1] for row in conn.execute("PRAGMA table_info(gpus)")}
    for column in CATALOG_COLUMNS:
        if column not in have:
            conn.execute(f"ALTER TABLE gpus ADD COLUMN {column} INTEGER")
    for statement in CATALOG_INDEXES.split(";"):
        conn.execute(statement)


def gpu_filter(
    hostname: str | None, models: Sequence[str] | None, after: str | None
) -> tuple[str, list[object]]:
    """Return the `AND …` clauses and arguments of a GPU page's filters and cursor."""
    clauses: list[str] = []
    args: list[object] = []
    if hostname is not None:
        clauses.append("g.hostname = ?")
        args.append(hostname)
    if models is not None:
        clauses.append(f"g.model IN ({','.join('?' * len(models))})")
        args += models
    if after is not None:
        clauses.append("(g.shard, g.uuid) > (?, ?)")
        args += catalog.gpu_key(after)
    return "".join(f" AND {c}" for c in clauses), args


def names_query(kind: str, limit: int, after: str | None) -> tuple[str, list[object]]:
    """Return the SQL and arguments of a page of names of one kind."""
    sql = "SELECT name FROM catalog_names WHERE kind = ?"
    args: list[object] = [kind]
    if after is not None:
        sql += " AND (shard, name) > (?, ?)"
        args += catalog.name_key(kind, after)
    return sql + " ORDER BY shard, name LIMIT ?", [*args, limit]


def backfill(conn: sqlite3.Connection) -> None:
    """Fill the catalog from the stored points, in the caller's transaction (O(data))."""
    gpus = conn.execute("SELECT id, uuid FROM gpus").fetchall()
    bound = newest_bound_ns()  # a point from the future is never last_seen
    conn.executemany(_BACKFILL_GPU, [(catalog.shard_of(u), bound, bound, i) for i, u in gpus])
    distinct = "SELECT DISTINCT m.name FROM latest l JOIN metrics m ON m.id = l.metric_id"
    names = [("metric", str(r[0])) for r in conn.execute(distinct)]
    for kind, column in (("host", "hostname"), ("model", "model")):
        rows = conn.execute(
            f"SELECT DISTINCT {column} FROM gpus WHERE first_seen_ns IS NOT NULL AND {column} != ''"
        )
        names += [(kind, str(r[0])) for r in rows]
    conn.executemany(INSERT_NAMES, [(k, catalog.name_key(k, n)[0], n) for k, n in names])


GpuRow = tuple[int, schema.GpuFields]  # row id, descriptor as stored
_ROW_ID, _ROW_FIELDS = itemgetter(0), itemgetter(1)  # of a GpuRow
_UUID = itemgetter(0)  # of a descriptor


class GpuRows:
    """Keeps the `gpus` rows of one store's writes: upserts what the catalog needs, returns ids.

    `update` (any thread) decides a batch's catalog records from what this process has
    confirmed (`store.catalog.CatalogTracker`, granularity `granularity_ns`; 1 ns makes
    `last_seen` exact); `ids` (in the write transaction) upserts them and every GPU whose
    row this process has not seen, and returns the row id of each GPU of the batch; `confirm`
    (after COMMIT) remembers both, so a rolled-back write is redone in full. With
    `catalog=False` (measuring its cost only) spans are not written.
    Thread-safe: the tracker has its lock, `_rows` is guarded by `_lock`.
    """

    def __init__(
        self, granularity_ns: int, catalog_on: bool = True, max_tracked: int = catalog.MAX_TRACKED
    ) -> None:
        self._tracker = catalog.CatalogTracker(granularity_ns, max_tracked) if catalog_on else None
        self._max = max_tracked
        self._rows: dict[str, GpuRow] = {}
        self._lock = threading.Lock()

    def update(self, batch: PointBatch, parts: Sequence[PointBatch] = ()) -> catalog.CatalogUpdate:
        """Return the catalog records `batch` (merged from `parts`) needs (none when the
        catalog is off)."""
        return self._tracker.updates(batch, parts) if self._tracker else catalog.NO_UPDATE

    def ids(
        self, conn: sqlite3.Connection, batch: PointBatch, update: catalog.CatalogUpdate
    ) -> tuple[list[int], dict[str, GpuRow]]:
        """Upsert the rows `batch` needs; return each GPU's row id and the rows learnt (new or
        re-described; the others are remembered already)."""
        spans = {r.uuid: r for r in update.gpus if not r.moved}
        fields = list(map(schema.gpu_fields, batch.gpus))
        uuids = list(map(_UUID, fields))
        with self._lock:
            known = list(map(self._rows.get, uuids))
        if not spans and all(known):
            rows = cast(list[GpuRow], known)
            if list(map(_ROW_FIELDS, rows)) == fields:
                # The usual batch: rows this process knows, as described; nothing to upsert.
                return list(map(_ROW_ID, rows)), {}
        upserts: list[tuple[object, ...]] = []
        seen: list[tuple[object, ...]] = []  # rows this process knows: last_seen, id, fields
        seen_upserts: list[tuple[object, ...]] = []  # the same as upserts (see below)
        changed: list[schema.GpuFields] = []  # rows new to this process or re-described
        for f, row in zip(fields, known, strict=True):
            record = spans.get(f[0]) if spans else None
            if record is not None:
                f = record.fields  # the newest point's descriptor (an entry may be older)
            fresh = row is None or row[1] != f
            if fresh:
                changed.append(f)
            if record is not None:
                upsert = (*f, catalog.shard_of(f[0]), record.first_seen_ns, record.last_seen_ns)
                if record.seen_only and row is not None and not fresh:
                    seen.append((record.last_seen_ns, row[0], *f))
                    seen_upserts.append(upsert)
                else:
                    upserts.append(upsert)
            elif fresh:
                upserts.append((*f, catalog.shard_of(f[0]), None, None))  # no span: keep its own
        conn.executemany(UPSERT_GPU, upserts)
        if seen:
            _update_last_seen(conn, seen, seen_upserts)
        learnt = _row_ids(conn, [u for u, row in zip(uuids, known, strict=True) if not row])
        ids = [row[0] if row else learnt[u] for u, row in zip(uuids, known, strict=True)]
        if not changed:
            return ids, {}
        by_uuid = dict(zip(uuids, ids, strict=True))
        return ids, {f[0]: (by_uuid[f[0]], f) for f in changed}

    def names(self, update: catalog.CatalogUpdate) -> list[NameRow]:
        """The catalog_names rows of `update`."""
        return [(n.kind, catalog.name_key(n.kind, n.name)[0], n.name) for n in update.names]

    def confirm(self, rows: dict[str, GpuRow], update: catalog.CatalogUpdate) -> None:
        """Remember rows and catalog records the store now holds (after COMMIT)."""
        with self._lock:
            if len(self._rows) + len(rows) > self._max:
                self._rows.clear()  # forgotten rows are looked up again: slower, never wrong
            self._rows.update(rows)
        if self._tracker:
            self._tracker.confirm(update)


def _update_last_seen(
    conn: sqlite3.Connection, seen: list[tuple[object, ...]], upserts: list[tuple[object, ...]]
) -> None:
    """Move last_seen of known rows forward (`seen`: `UPDATE_LAST_SEEN` arguments).

    If another writer re-described one of them meanwhile (a GPU seen by two collectors),
    every one gets its full upsert (`upserts`), as any record would: the newest writer's
    descriptor wins.
    """
    before = conn.total_changes
    conn.executemany(UPDATE_LAST_SEEN, seen)
    if conn.total_changes - before != len(seen):
        conn.executemany(UPSERT_GPU, upserts)


def _row_ids(conn: sqlite3.Connection, uuids: Iterable[str]) -> dict[str, int]:
    """Return the row id of each uuid (rows that exist: upserted just before)."""
    return ids_by_key(conn, "gpus", "uuid", uuids)


def ids_by_key(
    conn: sqlite3.Connection, table: str, column: str, keys: Iterable[str]
) -> dict[str, int]:
    """Return the `id` of each row of `table` whose `column` is one of `keys` (those that
    exist), looked up `_ID_CHUNK` keys at a time. `table` and `column` are this package's."""
    wanted = list(dict.fromkeys(keys))
    out: dict[str, int] = {}
    for i in range(0, len(wanted), _ID_CHUNK):
        chunk = wanted[i : i + _ID_CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(f"SELECT {column}, id FROM {table} WHERE {column} IN ({marks})", chunk)
        out.update(rows)  # (TEXT, INTEGER PRIMARY KEY): str and int as they come
    return out


def summary(row: tuple[Any, ...]) -> GpuSummary:
    """The catalog entry of a `gpus` row selected as in `store.sqlite._SUMMARY`."""
    uuid, host, gpu, device, model, first, last, container, pod, namespace = row
    return GpuSummary(
        str(uuid), str(host), int(gpu), str(device), str(model), int(first), int(last),
        str(container), str(pod), str(namespace),
    )  # fmt: skip

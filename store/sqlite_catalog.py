"""The GPU catalog in the SQLite store: its tables, their migration, and the catalog queries.

The catalog is the `gpus` table's shard, first_seen_ns and last_seen_ns columns (kept exact
by every write, in the points' transaction) plus `catalog_names` (hostnames, metrics,
models). Pages are index range scans on (shard, uuid) and (kind, shard, name), so their
cost follows the page, never the fleet or the history (see `store.catalog`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from proto.batch import PointBatch
from store import catalog
from store.base import newest_bound_ns

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


def new_names(batch: PointBatch, known: set[tuple[str, str]]) -> list[NameRow]:
    """Return the catalog_names rows of `batch` not in `known` (cleared when it gets large)."""
    wanted = {("metric", m) for m in batch.metrics}
    wanted |= {("host", g.hostname) for g in batch.gpus if g.hostname}
    wanted |= {("model", g.model) for g in batch.gpus if g.model}
    if len(known) > catalog.MAX_TRACKED:
        known.clear()
    return [(k, catalog.name_key(k, n)[0], n) for k, n in sorted(wanted - known)]


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
    names = [("metric", str(r[0])) for r in conn.execute("SELECT DISTINCT metric FROM latest")]
    for kind, column in (("host", "hostname"), ("model", "model")):
        rows = conn.execute(
            f"SELECT DISTINCT {column} FROM gpus WHERE first_seen_ns IS NOT NULL AND {column} != ''"
        )
        names += [(kind, str(r[0])) for r in rows]
    conn.executemany(INSERT_NAMES, [(k, catalog.name_key(k, n)[0], n) for k, n in names])

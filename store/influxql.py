"""InfluxQL text for the InfluxDB store's hot reads (catalog pages, latest values, raw pages).

Why InfluxQL and not Flux for these: on the InfluxDB 1.8 test server the same reads took
5-20x less time through InfluxQL (measured on 100,000 GPUs: one GPU's catalog entry
0.7 ms instead of 10-20 ms, its latest values 0.8 ms instead of 17-40 ms, a one-hour
1,000-point page 3-6 ms instead of 48-130 ms, a 1,146-GPU catalog page 16-32 ms instead of
84-127 ms): InfluxQL resolves tag predicates (equalities, ORs of them) on the series index
and streams the matching series, where Flux 0.65 evaluates the filter per series and
builds tables. InfluxDB 2.x OSS and Cloud serve the same InfluxQL on their
v1-compatible `/query` endpoint through a DBRP mapping (docs/storage.md); nothing here is
1.8-only. Writes, downsampling, counts and the backfill stay on Flux (`store.flux`).

Every caller value enters a statement only through `string()`, `ident()` or an `int()`:
string literals are single-quoted with backslash and quote escaped, identifiers
double-quoted (several of ours, `shard` and `name`, are InfluxQL keywords), and values
with control characters never get here (`store.validate`). Times are integer nanoseconds
(InfluxQL reads a bare integer compared with `time` as ns since the epoch).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from store import schema

MAX_TIME_NS = 2**63 - 2  # InfluxDB's largest timestamp


def string(value: str) -> str:
    """Return `value` as an InfluxQL string literal that cannot break out."""
    if any(c in value for c in "\n\r\x00"):
        raise ValueError("control character in an InfluxQL string")  # validated before
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def ident(name: str) -> str:
    """Return `name` as a double-quoted InfluxQL identifier."""
    if any(c in name for c in "\n\r\x00"):
        raise ValueError("control character in an InfluxQL identifier")
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def eq(tag: str, value: str) -> str:
    """Return `"tag" = 'value'`."""
    return f"{ident(tag)} = {string(value)}"


def any_of(tag: str, values: Iterable[str]) -> str:
    """Return an OR of tag equalities in parentheses (answered from the series index)."""
    return "(" + " OR ".join(eq(tag, v) for v in values) + ")"


def _select(columns: Sequence[str], measurement: str, clauses: Sequence[str]) -> str:
    head = f"SELECT {', '.join(ident(c) for c in columns)} FROM {ident(measurement)}"
    return head + (" WHERE " + " AND ".join(clauses) if clauses else "")


def shard_clause(shards: range) -> str:
    """Return the clause matching catalog shards (`shard` tags are 3-digit numbers)."""
    return any_of(schema.TAG_SHARD, (f"{int(s):03d}" for s in shards))


# `hostname` in the shard series and `uuid`, `gpu`, `model` in the host series are only
# there in records of the earlier layout (now in `record`): see store.influx_catalog.
CATALOG_COLUMNS = (
    schema.FIELD_RECORD, schema.TAG_UUID, schema.TAG_HOSTNAME, schema.TAG_GPU, schema.TAG_MODEL,
    schema.FIELD_LAST,
)  # fmt: skip


def catalog_gpus(
    shards: range | None,
    tags: dict[str, str],
    models: Sequence[str] = (),
    window: tuple[int, int] | None = None,
) -> str:
    """Return the statement for every GPU record in `shards` (all when None) matching `tags`.

    `shards` is a tag (the index picks the series); `tags` and `models` are the record's
    fields (`uuid`, `hostname`, `gpu`, `model`), compared while the shards are read;
    `window` bounds the records' point times (inclusive), so only that part of the shards
    is read. Grouped by shard, so each result series carries its shard (a reader needs no
    hash per record).
    """
    clauses = [] if shards is None else [shard_clause(shards)]
    clauses += [eq(k, v) for k, v in sorted(tags.items())]
    if models:
        clauses.append(any_of(schema.TAG_MODEL, models))
    if window is not None:
        clauses += [f"time >= {int(window[0])}", f"time <= {int(window[1])}"]
    statement = _select(CATALOG_COLUMNS, schema.CATALOG_MEASUREMENT, clauses)
    return f"{statement} GROUP BY {ident(schema.TAG_SHARD)}"


def catalog_host_gpus(tags: dict[str, str]) -> str:
    """Return the statement for the GPU records of one host (`tags` holds its `hostname`).

    The host's own series (`hostname` is its tag there): one cursor, a few points.
    """
    clauses = [eq(k, v) for k, v in sorted(tags.items())]
    return _select(CATALOG_COLUMNS, schema.HOSTS_MEASUREMENT, clauses)


def catalog_names(kind: str, shards: range | None) -> str:
    """Return the statement for every name of one kind in `shards` (all when None)."""
    clauses = [eq(schema.TAG_KIND, kind)]
    if shards is not None:
        clauses.append(shard_clause(shards))
    columns = (schema.FIELD_SEEN, schema.TAG_NAME)
    return _select(columns, schema.NAMES_MEASUREMENT, clauses)


def tag_eq(tag: str, value: str) -> str:
    """Return `"tag"::tag = 'value'`: the tag, even where a metric (a field) has its name."""
    return f"{ident(tag)}::tag = {string(value)}"


def latest(uuids: Sequence[str], metric: str, stop_ns: int) -> str:
    """Return the newest value of `metric` (with its source time) of each GPU in `uuids`.

    `last()` is a selector: the source-time field and the time come from the same row. The
    OR of uuids is answered from the series index (one series per GPU).
    """
    uuid_clause = "(" + " OR ".join(tag_eq(schema.TAG_UUID, u) for u in uuids) + ")"
    fields = f"last({ident(metric)}::field), {ident(schema.source_field(metric))}::field"
    return (
        f"SELECT {fields} FROM {ident(schema.MEASUREMENT)} "
        f"WHERE {uuid_clause} AND time <= {int(stop_ns)} GROUP BY {ident(schema.TAG_UUID)}"
    )


def _point_columns(metrics: Sequence[str] | None) -> str:
    """A value and a source-time column per metric, or every field (`*::field`)."""
    if not metrics:
        return "*::field"
    return ", ".join(f"{ident(m)}::field, {ident(schema.source_field(m))}::field" for m in metrics)


def newest_rows(uuids: Sequence[str], metrics: Sequence[str] | None, stop_ns: int) -> str:
    """Return the newest row at or before `stop_ns` of each GPU in `uuids` holding any of
    `metrics` (every field when None): one series per uuid, read backwards from its end."""
    uuid_clause = "(" + " OR ".join(tag_eq(schema.TAG_UUID, u) for u in uuids) + ")"
    return (
        f"SELECT {_point_columns(metrics)} FROM {ident(schema.MEASUREMENT)} "
        f"WHERE {uuid_clause} AND time <= {int(stop_ns)} GROUP BY {ident(schema.TAG_UUID)} "
        "ORDER BY time DESC LIMIT 1"
    )


def points(
    uuid: str, start_ns: int, end_ns: int, metrics: Sequence[str] | None, limit: int | None
) -> str:
    """Return one GPU's rows in [start_ns, end_ns] in time order, at most `limit` rows.

    A row is one time: a value and a source-time column per metric (`metrics`, or every
    field: `*::field`), null where the GPU has no point of that metric then.
    """
    where = f"{tag_eq(schema.TAG_UUID, uuid)} AND time >= {int(start_ns)} AND time <= {int(end_ns)}"
    tail = f" LIMIT {int(limit)}" if limit is not None else ""
    return f"SELECT {_point_columns(metrics)} FROM {ident(schema.MEASUREMENT)} WHERE {where}{tail}"

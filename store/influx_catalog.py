"""The GPU catalog on InfluxDB: line protocol for its records and the InfluxQL that pages it.

Layout (three small measurements beside `gpu_telemetry`), one series per catalog shard::

    gpu_catalog_v3,shard=042 uuid="GPU-...",gpu="0",model="NVIDIA H100",last=<ns>i,
        record="{json: first, last, hostname, device, container, pod, namespace, anchor}"
        <gpu_slot(uuid, anchor)>
    gpu_catalog_by_host_v3,hostname=h1 last=<ns>i,
        record="{json: first, last, uuid, gpu, model, device, ..., anchor}" <same slot>
    gpu_catalog_names_v2,kind=host,shard=007 name="h1",seen=<anchor_ns>i <slot(name)>

Later `last_seen`s alone (`GpuRecord.seen_only`: same writer, descriptor and first_seen)::

    gpu_catalog_v3,shard=042 last=<ns>i <slot>
    gpu_catalog_by_host_v3,hostname=h1 last=<ns>i <slot>

InfluxDB merges a point written again at the same series and time with the stored one
(the union of the fields, the new values winning: documented for 1.x and 2.x), so these
~50-byte lines move `last_seen` forward on both copies of the record; that is most of the
catalog's writes on a steady fleet (one per GPU per granularity), and they cost influxd
one integer value each instead of a whole record of string fields. Only the fields a
statement compares are fields of their own (`uuid`, `gpu`, `model` in the shard series;
the host series' tag is its filter): each field of each point is a value influxd parses,
caches and writes to TSM on the collector's write path. A `last` written onto a record
that is gone (its measurement dropped under a running writer) is a row without `record`:
readers skip it, and the writer's next whole record (at least every
`catalog.REFRESH_NS`) brings the GPU back. Records written before `last` was a field
(identity in fields, `last` only in the JSON) read the same (`_descriptor`): no backfill.

Why one series per shard: InfluxDB plans one cursor per series a statement touches
(~10 us each on the test machine, and more under concurrent statements), so the earlier
layout, one series per GPU, cost a 1,000-GPU page ~1,150 cursors (14 of its 16 ms in
influxd were planning, EXPLAIN ANALYZE). Now a page of 3 shards is 3 cursors over ~1,150
points. The GPU's identity is in fields: a `uuid`, `gpu` or `model` filter is a field
predicate InfluxDB evaluates while it reads the shards; a `hostname` filter reads the
host's own series instead (otherwise it would read every shard: docs/benchmarks.md).

Point time: a point's series + time is its identity (a write there overwrites it), so
each GPU's record gets its own time in its shard's series (`gpu_slot`): SLOT_BASE_NS,
plus a 17-bit hash of the uuid that picks the GPU's window of 2^24 ns (`gpu_window`),
plus a 24-bit hash of (uuid, anchor) inside it, the anchor being the time the writing
process first saw the GPU. So a writing process overwrites its own record in place
(descriptor changes included: no `moved` records are needed here), every other writer
keeps its own point (readers merge them with `store.catalog.reduce_gpus`: oldest
first_seen, newest descriptor), and a redelivered batch rewrites the same points. A
lookup by uuid (`gpu_statement`: the telemetry page, a GPU's detail) reads the GPU's
window only, a point or two, instead of its whole shard (~400 records at 100,000 GPUs:
1.0-1.7 ms of influxd against 0.7-1.0 for the window; docs/benchmarks.md). Names get
the hash of the name alone. Two GPUs of one shard on one slot (about 400 GPUs per shard
in 2^41 slots: ~4e-8 per shard), or two writers of one GPU (2^-24 per pair), would
overwrite each other; a write of either brings it back.

All slots lie in one 36-minute window in the year 2200, aligned to a week: inside one
InfluxDB shard group whatever the bucket's shard-group duration (1 h, 1 d, 7 d), never
reached by retention (the catalog stays until the backfill or a drop rebuilds it), and
after every real point, so `range(stop: now())` reads of the bucket never see it.

Reads: `CatalogReader` pages through the shards (`store.catalog.page_shards`) with
InfluxQL on `/query` (`store.influxql`). A page's rows are grouped by GPU and ordered
unparsed (`candidates`); only the GPUs the page serves have their JSON parsed
(`summarize`): a page of 1,000 reads ~1,150-1,400 records, and parsing and merging every
one of them was most of the gateway's CPU for the page.

Earlier layouts of the GPU records (`gpu_catalog`, one series per GPU; `gpu_catalog_v2`
and `gpu_catalog_by_host_v2`, slots hashed from (uuid, anchor) alone) are not read:
`gputel-store backfill-catalog` builds this one from the stored telemetry, and a
collector writes each GPU it sees again (docs/storage.md). The names' layout is unchanged
since `_v2`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from operator import itemgetter
from typing import Any, TypeVar

import orjson

from store import catalog, influxql, schema
from store.base import GpuSummary
from store.catalog import CatalogUpdate, GpuRecord
from store.lineprotocol import escape_measurement, escape_tag
from store.v1query import QueryClient, Series

T = TypeVar("T")
# A new model name reaches `model` filters within this long (there are a handful of models).
MODELS_TTL_S = 5.0


def _string_field(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_HEAD = escape_measurement(schema.CATALOG_MEASUREMENT) + "," + schema.TAG_SHARD + "="
_HOST_HEAD = escape_measurement(schema.HOSTS_MEASUREMENT) + "," + schema.TAG_HOSTNAME + "="
_NAMES_HEAD = escape_measurement(schema.NAMES_MEASUREMENT) + "," + schema.TAG_KIND + "="
# 2200-01-01 rounded down to a whole week since the epoch (shard groups align to it).
SLOT_BASE_NS = 7_258_118_400 // 604_800 * 604_800 * 1_000_000_000
SLOT_BITS = 41  # 2^41 ns: 36.6 minutes, inside one shard group of any duration >= 1 h
# A GPU's records lie in a window of 2^WINDOW_BITS ns (16.8 ms) that its uuid alone picks.
WINDOW_BITS = 24


def _hash(key: str, bits: int) -> int:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - bits)


def slot(key: str) -> int:
    """Return the point time of the catalog record with this key (stable, in the window)."""
    return SLOT_BASE_NS + _hash(key, SLOT_BITS)


def gpu_window(uuid: str) -> tuple[int, int]:
    """Return the first and last point time any record of this GPU can have (inclusive)."""
    low = SLOT_BASE_NS + (_hash(uuid, SLOT_BITS - WINDOW_BITS) << WINDOW_BITS)
    return low, low + (1 << WINDOW_BITS) - 1


def gpu_slot(uuid: str, anchor_ns: int) -> int:
    """Return the point time of a GPU's record as written by the process with this anchor:
    in the GPU's window (`gpu_window`), at an offset the anchor picks."""
    return gpu_window(uuid)[0] + _hash(f"{uuid}\x00{anchor_ns}", WINDOW_BITS)


def _gpu_fields(record: GpuRecord, in_host_series: bool) -> str:
    """The fields of a GPU record (empty texts left out of the JSON, `moved` only when set).

    Only what a statement compares is its own field: `uuid`, `gpu` and `model` in the
    shard series (uuid lookups, index and model filters), nothing in the host series (its
    tag is the filter); `last` is an integer field so that a later `last_seen` can be
    written alone (`seen_line`). Everything else is one JSON string: every field of a
    point is a value InfluxDB parses, indexes in its cache and writes to TSM on the
    collector's write path. `model` is written even when empty: a point rewritten at the
    same slot keeps the fields the new write does not name (InfluxDB merges them).
    """
    uuid, host, index, device, model, container, pod, namespace = record.fields
    body: dict[str, object] = {"first": record.first_seen_ns, "last": record.last_seen_ns}
    if in_host_series:
        body.update(uuid=uuid, gpu=index, model=model)
    else:
        body["hostname"] = host
    # Empty texts are left out (readers default them). The anchor is kept so that a
    # reader can tell a record's writer (`parse_gpu`). `last` stays in the JSON too (as of
    # the whole record) for readers of the earlier layout.
    for name, text in (("device", device), ("container", container), ("pod", pod),
                       ("namespace", namespace)):  # fmt: skip
        if text:
            body[name] = text
    body["anchor"] = record.anchor_ns
    if record.moved:
        body["moved"] = True
    fields = [] if in_host_series else [
        f"{schema.TAG_UUID}={_string_field(uuid)}", f'{schema.TAG_GPU}="{index}"',
        f"{schema.TAG_MODEL}={_string_field(model)}",
    ]  # fmt: skip
    fields.append(f"{schema.FIELD_LAST}={record.last_seen_ns}i")
    fields.append(f"{schema.FIELD_RECORD}={_string_field(orjson.dumps(body).decode())}")
    return ",".join(fields)


def gpu_line(record: GpuRecord, slot_ns: int) -> str:
    """Return the line protocol of one GPU record in its shard's series, at its `gpu_slot`."""
    shard = catalog.shard_of(record.fields[0])
    if record.seen_only:
        return f"{_HEAD}{shard:03d} {schema.FIELD_LAST}={record.last_seen_ns}i {slot_ns}"
    return f"{_HEAD}{shard:03d} {_gpu_fields(record, False)} {slot_ns}"


def host_line(record: GpuRecord, slot_ns: int) -> str:
    """Return the line protocol of one GPU record in its host's series (the `hostname` index)."""
    head = f"{_HOST_HEAD}{escape_tag(record.fields[1])}"
    if record.seen_only:
        return f"{head} {schema.FIELD_LAST}={record.last_seen_ns}i {slot_ns}"
    return f"{head} {_gpu_fields(record, True)} {slot_ns}"


def name_line(kind: str, name: str, anchor_ns: int) -> str:
    """Return the line protocol of one hostname, metric or model name."""
    shard = catalog.name_key(kind, name)[0]
    fields = f"{schema.TAG_NAME}={_string_field(name)},{schema.FIELD_SEEN}={anchor_ns}i"
    head = f"{_NAMES_HEAD}{kind},{schema.TAG_SHARD}={shard:03d}"
    return f"{head} {fields} {slot(kind + chr(0) + name)}"


def encode(update: CatalogUpdate) -> bytes:
    """Return the catalog records of `update` as line protocol (empty when none).

    `moved` records are left out of the shard series (the same writer's new record
    overwrites them there: same slot) but kept in the old host's series, so a filter on
    the old hostname stops finding the GPU.
    """
    lines: list[str] = []
    for record in update.gpus:
        slot_ns = gpu_slot(record.fields[0], record.anchor_ns)
        if not record.moved:
            lines.append(gpu_line(record, slot_ns))
        if record.fields[1]:
            lines.append(host_line(record, slot_ns))
    lines += [name_line(n.kind, n.name, n.anchor_ns) for n in update.names]
    return "\n".join(lines).encode()


def _descriptor(row: Sequence[Any], body: dict[str, Any]) -> tuple[str, str, int, str, int]:
    """(uuid, hostname, index, model, last_seen) of a row of `influxql.catalog_gpus`.

    The JSON is read first: records of this layout hold there what is not a field of
    their series. Rows of the earlier layout (every identity a field, `last` only in the
    JSON) read the same.
    """
    _slot, _record, uuid, host, index, model, last = row
    if "uuid" in body:  # a host-series record of this layout
        uuid, index, model = body["uuid"], body["gpu"], body["model"]
    host = body.get("hostname", host)
    last = body["last"] if last is None else last
    return uuid, host or "", int(index or 0), model or "", int(last)


def parse_gpu(row: Sequence[Any]) -> GpuRecord:
    """Return the record a row of `influxql.catalog_gpus` holds (time, then CATALOG_COLUMNS)."""
    body = orjson.loads(row[1])
    uuid, host, index, model, last = _descriptor(row, body)
    fields: schema.GpuFields = (
        uuid,
        host,
        index,
        str(body.get("device", "")),
        model,
        str(body.get("container", "")),
        str(body.get("pod", "")),
        str(body.get("namespace", "")),
    )
    first, moved = int(body["first"]), bool(body.get("moved"))
    return GpuRecord(fields, int(body["anchor"]), first, last, moved)


def complete(rows: Iterable[Sequence[Any]]) -> list[Sequence[Any]]:
    """The rows that hold a whole record (a `last` written onto a lost record holds none)."""
    return [row for row in rows if row[1] is not None]


# One GPU of a catalog read before its records are parsed: its catalog key and its rows.
Candidate = tuple[tuple[int, str], list[Sequence[Any]]]
_candidate_key: Callable[[Candidate], tuple[int, str]] = itemgetter(0)
_name_key: Callable[[tuple[tuple[int, str], str]], tuple[int, str]] = itemgetter(0)


def candidates(found: list[Series]) -> list[Candidate]:
    """Group the rows of a catalog read by GPU, keyed by catalog order, unparsed.

    A page reads its shards whole (~1,150-1,400 records for 1,000 GPUs at 100,000 GPUs)
    but serves `limit` of them: only those are parsed (`summarize`). Each result series is
    one shard (`influxql.catalog_gpus` groups by it), so the key needs no hash per record.
    """
    out: list[Candidate] = []
    for series in found:
        tag = series.tags.get(schema.TAG_SHARD)
        shard = int(tag) if tag else None  # always there: a missing tag costs a hash
        by_uuid: dict[str, list[Sequence[Any]]] = {}
        for row in series.values:
            if row[1] is None:
                continue  # a `last` written onto a lost record (`complete`)
            rows = by_uuid.get(row[2])
            if rows is None:
                by_uuid[row[2]] = [row]
            else:
                rows.append(row)
        out += [
            ((catalog.shard_of(uuid) if shard is None else shard, uuid), rows)
            for uuid, rows in by_uuid.items()
            if uuid
        ]
    return out


def summarize(candidate: Candidate) -> GpuSummary | None:
    """Return the GPU a candidate's rows describe (None: only `moved` records matched).

    One record (one writer, the usual case) becomes the summary directly; several are
    merged as `catalog.reduce_gpus` merges them.
    """
    rows = candidate[1]
    if len(rows) > 1:
        merged = catalog.reduce_gpus(parse_gpu(row) for row in rows)
        return merged[0] if merged else None
    body = orjson.loads(rows[0][1])
    if body.get("moved"):
        return None
    uuid, host, index, model, last = _descriptor(rows[0], body)
    get = body.get  # the texts are strings: orjson of what `_gpu_fields` wrote
    return GpuSummary(
        uuid, host, index, get("device", ""), model, body["first"], last,
        get("container", ""), get("pod", ""), get("namespace", ""),
    )  # fmt: skip


def gpu_statement(uuid: str) -> str:
    """Return the statement for one GPU's records: one shard, one uuid, its window of time."""
    shard = catalog.shard_of(uuid)
    tags = {schema.TAG_UUID: uuid}
    return influxql.catalog_gpus(range(shard, shard + 1), tags, window=gpu_window(uuid))


def gpu_of(found: list[Series]) -> GpuSummary | None:
    """Return the GPU the series of `gpu_statement` hold, or None."""
    records = (parse_gpu(row) for series in found for row in complete(series.values))
    gpus = catalog.reduce_gpus(records)
    return gpus[0] if gpus else None


class CatalogReader:
    """Pages of the catalog through InfluxQL on the `/query` endpoint (`store.influxql`).

    Remembers, per kind of page (and filter), how many entries a shard held on earlier
    pages, so the next page reads about the right number of shards in one query; and the
    model names for MODELS_TTL_S (a `model` filter needs them on every page). Both are
    hints: a wrong one costs a query, never a wrong answer. Thread-safe enough for that:
    a lost update of a hint only costs a query.
    """

    def __init__(self, client: QueryClient) -> None:
        self._client = client
        self._per_shard: dict[str, float] = {}
        self._models: tuple[float, list[str]] = (0.0, [])  # (monotonic expiry, names)

    def gpu_page(
        self, tags: dict[str, str], limit: int, after: str | None, models: Sequence[str] = ()
    ) -> list[GpuSummary]:
        """Return a page of reduced GPUs matching `tags` and `models`, in catalog order."""
        key = catalog.gpu_key(after) if after else None
        if schema.TAG_HOSTNAME in tags:  # a host has few GPUs: its own series, no shards
            rows = self._client.series(influxql.catalog_host_gpus(tags))
            found = catalog.reduce_gpus(parse_gpu(r) for s in rows for r in complete(s.values))
            found = [g for g in found if key is None or catalog.gpu_key(g.uuid) > key]
            host = tags[schema.TAG_HOSTNAME]
            return [g for g in self._current(found) if g.hostname == host][:limit]
        density = "gpu:" + ",".join(f"{k}={v}" for k, v in sorted(tags.items()))
        density += ":" + ",".join(models)

        def read(shards: range | None) -> list[Candidate]:
            return candidates(self._client.series(influxql.catalog_gpus(shards, tags, models)))

        out: list[GpuSummary] = []
        while len(out) < limit:  # once, unless a GPU matched only by `moved` records
            want = limit - len(out)
            picked = self._paged(read, _candidate_key, catalog.GPU_SHARDS, want, key, density)
            out += [s for s in map(summarize, picked) if s is not None]
            if len(picked) < want:
                break
            key = picked[-1][0]
        return out

    def _current(self, found: list[GpuSummary]) -> list[GpuSummary]:
        """The GPUs of a filtered read as all their records describe them, in one request.

        A filter reads only the records that match it; another writer's record of the same
        GPU (a collector that saw it move, while this record's writer replayed older
        points) may be newer and hold other values: the newest record wins here too.
        """
        if not found:
            return []
        statements = [gpu_statement(g.uuid) for g in found]
        out: list[GpuSummary] = []
        for result in self._client.results(statements):
            records = (parse_gpu(row) for series in result for row in complete(series.values))
            out += catalog.reduce_gpus(records)
        return out

    def gpu(self, uuid: str) -> GpuSummary | None:
        """Return the GPU with this uuid (one shard, one uuid), or None."""
        return gpu_of(self._client.series(gpu_statement(uuid)))

    def names(self, kind: str, limit: int, after: str | None) -> list[str]:
        """Return a page of names of one kind, in catalog order."""
        key = catalog.name_key(kind, after) if after is not None else None
        shards = catalog.NAME_SHARDS[kind]

        def read(run: range | None) -> list[tuple[tuple[int, str], str]]:
            found = self._client.series(influxql.catalog_names(kind, run))
            names = {row[2] for series in found for row in series.values if row[2]}
            return [((catalog.shard_of(n, shards), n), n) for n in names]  # keyed once

        return [n for _, n in self._paged(read, _name_key, shards, limit, key, kind)]

    def model_names(self) -> list[str]:
        """Every model name, kept MODELS_TTL_S."""
        expiry, names = self._models
        if time.monotonic() >= expiry:
            names, after = [], None
            while page := self.names("model", 10_000, after):
                names += page
                if len(page) < 10_000:
                    break
                after = page[-1]
            self._models = (time.monotonic() + MODELS_TTL_S, names)
        return names

    def _paged(
        self,
        read: Callable[[range | None], list[T]],
        key: Callable[[T], tuple[int, str]],
        shards: int,
        limit: int,
        after: tuple[int, str] | None,
        density: str,
    ) -> list[T]:
        """`catalog.page_shards`, starting from the density earlier pages of this kind saw."""
        per_shard = self._per_shard.get(density, 0.0)
        first = int(limit / per_shard) + 1 if per_shard else 1
        seen = [0, 0]  # entries, shards

        def counting(run: range | None) -> list[T]:
            found = read(run)
            seen[0] += len(found)
            seen[1] += shards if run is None else len(run)
            return found

        out = catalog.page_shards(counting, key, shards, limit, after, first_span=first)
        if seen[1]:
            self._per_shard[density] = max(seen[0] / seen[1], 0.5)
        return out

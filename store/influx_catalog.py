"""The GPU catalog on InfluxDB: line protocol for its records and the InfluxQL that pages it.

Layout (two small measurements beside `gpu_telemetry`)::

    gpu_catalog,gpu=0,hostname=h1,model=NVIDIA\\ H100,shard=042,uuid=GPU-...
        record="{json: device, container, pod, namespace, first, last, moved}" <anchor_ns>
    gpu_catalog_names,kind=host,name=h1,shard=007 seen=<anchor_ns>i <anchor_ns>

One series per (GPU, hostname, index, model): the tags a filter can match exactly, so
`hostname`, `model` and `shard` are answered by InfluxDB's tag index. Everything else is one
string field (one JSON document): one field per record is one column to read, and (when
reads were Flux) 1.8 only pushed `group()` down for rows of one type. A record is pinned at
its anchor (the time the writing process first saw the GPU) and overwritten in place there, so a
series holds one point per writing process that saw the GPU, not one per update: reads
cost O(GPUs on the page), whatever the history. Readers merge a GPU's points and series
with `store.catalog.reduce_gpus`.

Reads: `CatalogReader` pages through the shards (`store.catalog.page_shards`) with
InfluxQL on `/query` (`store.influxql`): its tag predicates are resolved on the series
index, and a 3-shard page (~1,150 records at 100,000 GPUs) took 16-32 ms against
84-127 ms for the same read in Flux on the 1.8 test server.

Retention: a bucket with a finite retention drops a record whose anchor ages out while
its GPU keeps reporting to the same collector process; the GPU comes back on the next
process start or `gputel-store backfill-catalog`. Keep the catalog's bucket retention
longer than collector process lifetimes (docs/storage.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import orjson

from store import catalog, influxql, schema
from store.base import GpuSummary
from store.catalog import CatalogUpdate, GpuRecord
from store.lineprotocol import escape_measurement, escape_tag
from store.v1query import QueryClient

T = TypeVar("T")
# A new model name reaches `model` filters within this long (there are a handful of models).
MODELS_TTL_S = 5.0


def _string_field(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_HEAD = escape_measurement(schema.CATALOG_MEASUREMENT)
_NEEDS_ESCAPE = frozenset(", =")


def _tag(text: str) -> str:
    return escape_tag(text) if _NEEDS_ESCAPE.intersection(text) else text


def gpu_line(record: GpuRecord) -> str:
    """Return the line protocol of one GPU record (tags in key order, empty ones left out)."""
    uuid, host, index, device, model, container, pod, namespace = record.fields
    tags = [f"{schema.TAG_GPU}={index}"]
    if host:
        tags.append(f"{schema.TAG_HOSTNAME}={_tag(host)}")
    if model:
        tags.append(f"{schema.TAG_MODEL}={_tag(model)}")
    tags.append(f"{schema.TAG_SHARD}={catalog.shard_of(uuid):03d}")
    tags.append(f"{schema.TAG_UUID}={_tag(uuid)}")
    body: dict[str, object] = {"first": record.first_seen_ns, "last": record.last_seen_ns}
    # Empty texts and moved=false are left out (readers default them): every byte of a
    # record is parsed and stored by InfluxDB on the collector's write path.
    for name, text in (("device", device), ("container", container), ("pod", pod),
                       ("namespace", namespace)):  # fmt: skip
        if text:
            body[name] = text
    if record.moved:
        body["moved"] = True
    value = _string_field(orjson.dumps(body).decode())
    return f"{_HEAD},{','.join(tags)} {schema.FIELD_RECORD}={value} {record.anchor_ns}"


def name_line(kind: str, name: str, anchor_ns: int) -> str:
    """Return the line protocol of one hostname, metric or model name."""
    shard = catalog.name_key(kind, name)[0]
    tags = f"{schema.TAG_KIND}={kind},{schema.TAG_NAME}={escape_tag(name)}"
    tags += f",{schema.TAG_SHARD}={shard:03d}"
    return f"{schema.NAMES_MEASUREMENT},{tags} {schema.FIELD_SEEN}={anchor_ns}i {anchor_ns}"


def encode(update: CatalogUpdate) -> bytes:
    """Return the catalog records of `update` as line protocol (empty when none)."""
    lines = [gpu_line(r) for r in update.gpus]
    lines += [name_line(n.kind, n.name, n.anchor_ns) for n in update.names]
    return "\n".join(lines).encode()


def parse_gpu(row: Sequence[Any]) -> GpuRecord:
    """Return the record a row of `influxql.catalog_gpus` holds (time, then CATALOG_COLUMNS)."""
    anchor, record, uuid, host, index, model = row
    body = orjson.loads(record)
    fields: schema.GpuFields = (
        uuid,
        host or "",
        int(index or 0),
        str(body.get("device", "")),
        model or "",
        str(body.get("container", "")),
        str(body.get("pod", "")),
        str(body.get("namespace", "")),
    )
    first, last, moved = int(body["first"]), int(body["last"]), bool(body.get("moved"))
    return GpuRecord(fields, int(anchor), first, last, moved)


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

    def records(
        self, shards: range | None, tags: dict[str, str], models: Sequence[str] = ()
    ) -> list[GpuRecord]:
        """Every GPU record in `shards` (all when None) matching `tags` and `models`."""
        found = self._client.series(influxql.catalog_gpus(shards, tags, models))
        return [parse_gpu(row) for series in found for row in series.values]

    def gpu_page(
        self, tags: dict[str, str], limit: int, after: str | None, models: Sequence[str] = ()
    ) -> list[GpuSummary]:
        """Return a page of reduced GPUs matching `tags` and `models`, in catalog order."""
        key = catalog.gpu_key(after) if after else None
        if schema.TAG_HOSTNAME in tags:  # a host has few GPUs: one index lookup, no shards
            found = catalog.reduce_gpus(self.records(None, tags))
            return [g for g in found if key is None or catalog.gpu_key(g.uuid) > key][:limit]
        density = "gpu:" + ",".join(f"{k}={v}" for k, v in sorted(tags.items()))
        density += ":" + ",".join(models)

        def read(shards: range | None) -> list[GpuSummary]:
            return catalog.reduce_gpus(self.records(shards, tags, models))

        by_key = lambda g: catalog.gpu_key(g.uuid)  # noqa: E731
        return self._paged(read, by_key, catalog.GPU_SHARDS, limit, key, density)

    def gpu(self, uuid: str) -> GpuSummary | None:
        """Return the GPU with this uuid (one shard, one uuid), or None."""
        shard = catalog.shard_of(uuid)
        found = catalog.reduce_gpus(self.records(range(shard, shard + 1), {schema.TAG_UUID: uuid}))
        return found[0] if found else None

    def names(self, kind: str, limit: int, after: str | None) -> list[str]:
        """Return a page of names of one kind, in catalog order."""
        key = catalog.name_key(kind, after) if after is not None else None

        def read(shards: range | None) -> list[str]:
            found = self._client.series(influxql.catalog_names(kind, shards))
            return sorted({row[2] for series in found for row in series.values if row[2]})

        by_key = lambda n: catalog.name_key(kind, n)  # noqa: E731
        return self._paged(read, by_key, catalog.NAME_SHARDS[kind], limit, key, kind)

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

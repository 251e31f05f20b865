"""The GPU catalog: one small record per GPU (and per hostname, metric and model name).

Why: listing GPUs, hosts and metrics by scanning the telemetry costs O(series) — 29 s per
page on InfluxDB with 24,700 GPUs. Both stores therefore keep a catalog beside the
telemetry, written by the same `write` that stores the points, and the gateway pages
through the catalog only (see docs/storage.md).

Order and shards: catalog entries are ordered by (shard, key), where the shard is a stable
hash of the key (`shard_of`). A page reads only the shards it covers, each an exact-match
index lookup on both stores; on InfluxDB 1.8 a range predicate on a tag reads every series
(5.9 s for 100,000 GPUs) while an equality is answered from the index (17 ms per shard).
A uuid-prefix shard would keep uuid order but a skewed fleet (identities like
`host-001:0`) would put every GPU in one shard.

Descriptor: a GPU's descriptor is that of its newest point. Points older than the
recorded `last_seen` that carry another descriptor (a replay, a late or redelivered batch
from before a move) widen the span but leave the descriptor alone; at an equal time the
later write wins.

`last_seen` granularity: a record is rewritten when a GPU first appears (per writing
process), when its descriptor changes, and when its newest point is at least
`granularity_ns` (default 60 s) newer than the recorded `last_seen`. So `last_seen` lags
the newest stored point by less than the granularity; `first_seen` is exact.

A record that only moves `last_seen` forward is marked `seen_only`: a store may write just
that (InfluxDB writes one integer field onto the record's point). At least once every
REFRESH_NS per GPU the whole record is written instead, so a record lost under a writer
(its catalog dropped while the writer ran) comes back within that time.
"""

from __future__ import annotations

import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import NamedTuple, TypeVar, cast

from proto.batch import Gpu, PointBatch
from store import schema
from store.base import GpuSummary, newest_bound_ns

GPU_SHARDS = 256  # ~390 GPUs per shard at 100,000 GPUs: a 1,000 page reads about 3 shards
NAME_SHARDS = {"host": 32, "metric": 1, "model": 1}
NAME_KINDS = tuple(NAME_SHARDS)
DEFAULT_GRANULARITY_NS = 60 * 1_000_000_000
MAX_TRACKED = 1_000_000  # GPUs and names remembered per process (an evicted one is re-sent)
REFRESH_NS = 3600 * 1_000_000_000  # a whole record at least this often (see above)


def shard_of(key: str, shards: int = GPU_SHARDS) -> int:
    """Return the catalog shard of `key` (CRC-32 of its UTF-8 bytes, modulo `shards`)."""
    return zlib.crc32(key.encode()) % shards if shards > 1 else 0


def gpu_key(uuid: str) -> tuple[int, str]:
    """Return the catalog sort key of a GPU."""
    return shard_of(uuid), uuid


def name_key(kind: str, name: str) -> tuple[int, str]:
    """Return the catalog sort key of a hostname, metric or model name."""
    return shard_of(name, NAME_SHARDS[kind]), name


class GpuRecord(NamedTuple):
    """One catalog write for a GPU: its descriptor and the span the writer saw.

    `anchor_ns` is where the store may pin the record (the InfluxDB point time); `moved`
    marks a record for a descriptor the GPU no longer has (its hostname, model or index
    changed), so filters on the old value stop finding it. `seen_only`: the same writer
    stored this record before with the same descriptor, anchor and `first_seen`; only
    `last_seen` moved. A named tuple, not a frozen dataclass: the collector makes one per
    GPU that moves on, and a frozen dataclass's `__init__` cost ~3x a tuple's.
    """

    fields: schema.GpuFields
    anchor_ns: int
    first_seen_ns: int
    last_seen_ns: int
    moved: bool = False
    seen_only: bool = False

    @property
    def uuid(self) -> str:
        """The GPU's uuid."""
        return self.fields[0]

    def summary(self) -> GpuSummary:
        """Return the record as the store contract's summary."""
        uuid, host, index, device, model, container, pod, namespace = self.fields
        return GpuSummary(
            uuid, host, index, device, model, self.first_seen_ns, self.last_seen_ns,
            container, pod, namespace,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class NameRecord:
    """One catalog write for a hostname, metric or model name."""

    kind: str
    name: str
    anchor_ns: int


@dataclass(frozen=True, slots=True)
class CatalogUpdate:
    """The catalog writes one batch needs (often none)."""

    gpus: tuple[GpuRecord, ...] = ()
    names: tuple[NameRecord, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.gpus or self.names)


NO_UPDATE = CatalogUpdate()
_UUID = itemgetter(0)
_FIELDS = attrgetter("fields")
_FIRST = attrgetter("first_seen_ns")
_LAST = attrgetter("last_seen_ns")


def _identity(fields: schema.GpuFields) -> tuple[str, int, str]:
    """The descriptor parts that are catalog tags on InfluxDB (hostname, index, model)."""
    return fields[1], fields[2], fields[4]


def spans(
    batch: PointBatch, bound_ns: int, span: tuple[int, int] | None = None
) -> list[tuple[int, int]]:
    """Return (oldest, newest) point time of each GPU of `batch` (-1, -1 when it has none).

    `span`: the batch's (oldest, newest) point time, when the caller has it.

    Points after `bound_ns` (`store.base.newest_bound_ns`: stamped in the future) are left
    out: they are never a GPU's last_seen, and a GPU with only such points is not listed.
    Runs on every batch the collector writes, so the usual batch (one scrape, one time) is
    answered from min/max of the time column, not from a pass over the points.
    """
    none = (-1, -1)
    times = batch.time_ns
    if not times:
        return [none] * len(batch.gpus)
    t_lo, t_hi = (min(times), max(times)) if span is None else span
    if t_lo == t_hi:
        if t_hi > bound_ns:
            return [none] * len(batch.gpus)
        present = set(batch.gpu_index)
        return [(t_lo, t_hi) if g in present else none for g in range(len(batch.gpus))]
    lo = [-1] * len(batch.gpus)
    hi = [-1] * len(batch.gpus)
    for g, t in zip(batch.gpu_index, times, strict=True):
        if t > bound_ns:
            continue
        if lo[g] < 0 or t < lo[g]:
            lo[g] = t
        if t > hi[g]:
            hi[g] = t
    return list(zip(lo, hi, strict=True))


class CatalogTracker:
    """Decides which catalog records a batch needs, from what this process already wrote.

    `updates` is called when a batch is prepared (any thread), `confirm` once the store
    acknowledged the write that carried the update; only confirmed records count, so a
    failed or abandoned write is re-sent with a later batch. Thread-safe (one lock).
    """

    def __init__(
        self, granularity_ns: int = DEFAULT_GRANULARITY_NS, max_tracked: int = MAX_TRACKED
    ) -> None:
        self.granularity_ns = granularity_ns
        self._max = max_tracked
        self._gpus: OrderedDict[str, GpuRecord] = OrderedDict()
        self._names: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def updates(self, batch: PointBatch, parts: Sequence[PointBatch] = ()) -> CatalogUpdate:
        """Return the records `batch` adds or moves forward (empty when none).

        `parts`: the records `batch` was merged from, in order (`collector.pending.merge`).
        Given, each part is decided in turn, as if written one after the other, each seeing
        the records decided for the parts before it; the update holds every `moved` record,
        then the last current record of each GPU (it covers the earlier ones; after the
        `moved` ones, so a GPU moved away and back within the flush ends current on InfluxDB,
        where both records are one point of one series). A part is
        usually one scrape, one time: its spans need no pass over its points, and one that
        brings nothing new (most of a live fleet's) costs a few C-level passes, where a
        merged batch of several scrapes went through the per-GPU loop whole.
        """
        if not len(batch):
            return NO_UPDATE
        decided: dict[str, GpuRecord] = {}  # the newest current record of each GPU, this call
        moved: list[GpuRecord] = []
        names: dict[tuple[str, str], int] = {}
        with self._lock:
            for part in parts if len(parts) > 1 else (batch,):
                if len(part):
                    self._decide(part, decided, moved, names)
        records = tuple(NameRecord(k, n, t) for (k, n), t in sorted(names.items()))
        return CatalogUpdate((*moved, *decided.values()), records)

    def _decide(
        self,
        batch: PointBatch,
        decided: dict[str, GpuRecord],
        moved: list[GpuRecord],
        names: dict[tuple[str, str], int],
    ) -> None:
        """Add the records one batch needs to `decided`, `moved` and `names` (lock held).

        A GPU's known record is the one `decided` for it already, else the confirmed one.
        """
        times = min(batch.time_ns), max(batch.time_ns)
        batch_lo = times[0]
        gpu_fields, confirmed, granularity = schema.gpu_fields, self._gpus, self.granularity_ns
        if not self._all_quiet(batch, times, decided):
            found = spans(batch, newest_bound_ns(), times)
            for gpu, (lo, hi) in _one_per_gpu(batch.gpus, found):
                if lo < 0:
                    continue
                fields = gpu_fields(gpu)
                uuid = fields[0]
                earlier = decided.get(uuid)
                known = earlier if earlier is not None else confirmed.get(uuid)
                if known is not None and known.fields != fields and hi < known.last_seen_ns:
                    fields = known.fields  # points older than the descriptor's: it stays
                if known is not None and known.fields == fields:
                    # Its host and model names were confirmed with (or before) this record.
                    if hi < known.last_seen_ns + granularity and lo >= known.first_seen_ns:
                        continue  # the usual case: nothing new for the catalog
                    new = [_moved_on(known, lo, hi)]
                else:
                    new = self._gpu_records(known, fields, lo, hi)
                    for kind, name in (("host", gpu.hostname), ("model", gpu.model)):
                        if name and (kind, name) not in self._names:
                            names.setdefault((kind, name), lo)
                for record in new:
                    if record.moved:
                        moved.append(record)
                        continue
                    if record.seen_only and earlier is not None and not earlier.seen_only:
                        record = record._replace(seen_only=False)  # the store lacks `earlier`
                    decided[uuid] = record
        for metric in set(batch.metrics):
            if ("metric", metric) not in self._names:
                names.setdefault(("metric", metric), batch_lo)

    def _all_quiet(
        self, batch: PointBatch, times: tuple[int, int], decided: dict[str, GpuRecord]
    ) -> bool:
        """True when no GPU of `batch` needs a record (lock held): the usual batch, decided
        in a few C-level passes instead of the loop's ~1.5 us per GPU.

        Every GPU is known with this descriptor (`decided` for it in this call, else
        confirmed), and the batch's whole time range lies in [first_seen, last_seen +
        granularity) of each: then every GPU's own span does too, which is the loop's
        "nothing new" case for each one.
        """
        fields = list(map(schema.gpu_fields, batch.gpus))
        uuids = map(_UUID, fields)
        if decided:
            earlier, confirmed = decided.get, self._gpus.get
            known = [earlier(u) or confirmed(u) for u in uuids]
        else:
            known = list(map(self._gpus.get, uuids))
        if not all(known):
            return False
        records = cast(list[GpuRecord], known)
        return (
            list(map(_FIELDS, records)) == fields
            and times[0] >= max(map(_FIRST, records), default=times[0])
            and times[1] < min(map(_LAST, records), default=0) + self.granularity_ns
        )

    def _gpu_records(
        self, known: GpuRecord | None, fields: schema.GpuFields, lo: int, hi: int
    ) -> list[GpuRecord]:
        if known is None:
            return [GpuRecord(fields, lo, lo, hi)]
        first, last = min(known.first_seen_ns, lo), max(known.last_seen_ns, hi)
        if fields != known.fields:
            new = GpuRecord(fields, known.anchor_ns, first, last)
            if _identity(fields) == _identity(known.fields):
                return [new]  # same InfluxDB series: the new record overwrites the old
            gone = GpuRecord(known.fields, known.anchor_ns, first, known.last_seen_ns, True)
            return [gone, new]
        if hi >= known.last_seen_ns + self.granularity_ns or lo < known.first_seen_ns:
            return [GpuRecord(fields, known.anchor_ns, first, last)]
        return []

    def confirm(self, update: CatalogUpdate) -> None:
        """Record that the store holds `update`."""
        if not update:
            return
        with self._lock:
            for record in update.gpus:
                if record.moved:
                    continue
                uuid = record.fields[0]
                known = self._gpus.get(uuid)
                if known is not None and known.last_seen_ns > record.last_seen_ns:
                    record = GpuRecord(
                        record.fields, record.anchor_ns,
                        min(record.first_seen_ns, known.first_seen_ns), known.last_seen_ns,
                    )  # fmt: skip
                elif record.seen_only:
                    record = GpuRecord(record.fields, record.anchor_ns, record.first_seen_ns,
                                       record.last_seen_ns)  # fmt: skip
                self._gpus[uuid] = record
                self._gpus.move_to_end(uuid)
            for name in update.names:
                self._names[(name.kind, name.name)] = None
            while len(self._gpus) > self._max:
                self._gpus.popitem(last=False)
            while len(self._names) > self._max:
                self._names.popitem(last=False)


def _one_per_gpu(
    gpus: list[Gpu], spans_: list[tuple[int, int]]
) -> Iterable[tuple[Gpu, tuple[int, int]]]:
    """Each GPU of a batch once: the entry of its newest point, with the span of all of them.

    A batch lists a GPU once per descriptor, so one that changed (or a replay mixing old
    and new points) has several entries: the newest point's descriptor is the GPU's.
    """
    if len({g.uuid for g in gpus}) == len(gpus):
        return zip(gpus, spans_, strict=True)  # the usual batch
    merged: dict[str, tuple[Gpu, tuple[int, int]]] = {}
    for gpu, (lo, hi) in zip(gpus, spans_, strict=True):
        seen = merged.get(gpu.uuid)
        if seen is None or seen[1][0] < 0:
            merged[gpu.uuid] = (gpu, (lo, hi))
        elif lo >= 0:
            newest = gpu if hi >= seen[1][1] else seen[0]
            merged[gpu.uuid] = (newest, (min(lo, seen[1][0]), max(hi, seen[1][1])))
    return merged.values()


def _same_refresh_period(uuid: str, a_ns: int, b_ns: int) -> bool:
    """True when `a_ns` and `b_ns` are in one REFRESH_NS period of this GPU (phases spread
    by uuid, so a fleet does not refresh at once)."""
    phase = zlib.crc32(uuid.encode()) * REFRESH_NS >> 32
    return (a_ns + phase) // REFRESH_NS == (b_ns + phase) // REFRESH_NS


def _moved_on(known: GpuRecord, lo: int, hi: int) -> GpuRecord:
    """The record after `known` (same descriptor) for a span (lo, hi) it does not cover.

    Runs once per GPU that moves on: comparisons, not min()/max() calls.
    """
    first = lo if lo < known.first_seen_ns else known.first_seen_ns
    last = hi if hi > known.last_seen_ns else known.last_seen_ns
    seen_only = first == known.first_seen_ns and _same_refresh_period(
        known.fields[0], last, known.last_seen_ns
    )
    return GpuRecord(known.fields, known.anchor_ns, first, last, False, seen_only)


def reduce_gpus(records: Iterable[GpuRecord]) -> list[GpuSummary]:
    """Merge every record of each GPU into one summary, in catalog order.

    A GPU can have several records: one per InfluxDB anchor (each writing process pins its
    own) and one per (hostname, index, model) it ever had. The newest current record gives
    the descriptor and `last_seen`, the oldest `first_seen`; a GPU whose only records here
    are `moved` ones is left out (it matched a filter on a value it no longer has).
    """
    current: dict[str, GpuRecord] = {}
    first: dict[str, int] = {}
    for r in records:  # a page's worth of records: kept to plain dict work (it is per request)
        uuid = r.fields[0]
        seen = first.get(uuid)
        if seen is None or r.first_seen_ns < seen:
            first[uuid] = r.first_seen_ns
        known = current.get(uuid)
        if not r.moved and (known is None or r.last_seen_ns > known.last_seen_ns):
            current[uuid] = r
    keyed = []
    for u, r in current.items():
        _, host, index, device, model, container, pod, namespace = r.fields
        summary = GpuSummary(
            u, host, index, device, model, first[u], r.last_seen_ns, container, pod, namespace
        )
        keyed.append((gpu_key(u), summary))
    keyed.sort(key=lambda pair: pair[0])
    return [summary for _, summary in keyed]


T = TypeVar("T")


def page_shards(
    read: Callable[[range | None], list[T]],
    key: Callable[[T], tuple[int, str]],
    shards: int,
    limit: int,
    after: tuple[int, str] | None,
    first_span: int = 1,
    max_span: int = 16,
) -> list[T]:
    """Return up to `limit` items after `after` in (shard, key) order, reading few shards.

    `read(shards)` returns every item of a contiguous run of shards (`read(None)`: of all
    shards). The first read covers `first_span` shards; later ones as many as the density
    seen so far suggests, at most `max_span`: InfluxDB 1.8 evaluates a long OR of tag
    equalities per series (256 clauses on 100,000 GPUs: 78 s). When the density says a page
    needs more than `max_span` shards, the catalog is small (under `max_span` x `limit`
    entries from here on), and one read of everything costs less than many reads.
    """
    out: list[T] = []
    start = after[0] if after else 0
    span, seen, read_shards = max(1, first_span), 0, 0
    while start < shards and len(out) < limit:
        if span > max_span:
            rest = (i for i in read(None) if key(i)[0] >= start)
            out += sorted((i for i in rest if after is None or key(i) > after), key=key)
            break
        run = range(start, min(shards, start + span))
        found = read(run)
        seen += len(found)
        read_shards += len(run)
        out += sorted((i for i in found if after is None or key(i) > after), key=key)
        start = run.stop
        per_shard = seen / read_shards
        span = 2 * len(run) if per_shard == 0 else int((limit - len(out)) / per_shard * 1.25) + 1
    return out[:limit]


def matching_models(models: Iterable[str], needle: str) -> list[str]:
    """Return the models that hold `needle`, ignoring case (`?model=h100` finds "NVIDIA H100")."""
    folded = needle.casefold()
    return sorted(m for m in models if folded in m.casefold())

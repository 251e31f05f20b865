"""The InfluxDB store: InfluxDB 2.x API through `influxdb-client`; InfluxQL and Flux reads.

Writes send hand-built line protocol (`store.lineprotocol`), gzip-compressed, through the
client's write service with client-side retries off: the caller (the collector) owns retries and
only commits offsets after `write` returned. The body is compressed here at level 1
(`GZIP_LEVEL`), not by the client (which always uses level 9): on line protocol level 1 is
~7x cheaper for a ~7 % bigger body, and the collector runs on the same cores as InfluxDB.
`prepare` does the CPU half (validate, encode, compress) so the collector can do it while the
previous batch is being written. Thread-safe: the HTTP clients pool (and reuse) connections
and the encoder has a lock.

Reads: what the gateway does on every request (catalog pages, a GPU's entry, its latest
values, raw telemetry pages) is InfluxQL on the v1-compatible `/query` endpoint, which
InfluxDB 2.x serves through the bucket's DBRP mapping (`store.v1query`, `store.influxql`):
on the 1.8 test server it ran these 5-20x faster than Flux. Downsampling, counts and the
one-off backfill stay Flux (in the subset 1.8's Flux 0.65 runs), read from its CSV directly
so timestamps keep their nanoseconds.

The GPU, host and metric lists read the catalog (`store.catalog`, layout in
`store.influx_catalog`), never the telemetry: `prepare` appends the catalog records a batch
needs to the same body, so they are stored by the same request as the points, and a
retried body re-sends them. Listing through the telemetry read the first and last point of
every series (29 s per page for 24,700 GPUs); a catalog page reads the few catalog shards it
covers, each an exact tag match answered from InfluxDB's index.
Against InfluxDB 1.8 the bucket is "db" or "db/rp", the org is ignored and the token is
"user:password" (anything when auth is off).
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import urllib3
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.domain.dialect import Dialect
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException
from influxdb_client.service.write_service import WriteService

from proto.batch import PointBatch
from store import catalog, flux, influx_catalog, influx_points, schema, validate
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
from store.lineprotocol import LineProtocolEncoder
from store.v1query import QueryClient, Series

_DIALECT = Dialect(  # type: ignore[no-untyped-call]
    header=True, delimiter=",", annotations=[], comment_prefix="#", date_time_format="RFC3339Nano"
)
Row = dict[str, str]


def translate_error(exc: Exception, action: str) -> StoreError:
    """Return the store error for an exception raised by the HTTP client."""
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        detail = f"InfluxDB {action} failed: HTTP {status} {exc.reason}: {str(exc.body)[:300]}"
        if status >= 500 or status in (0, 408, 429):
            return StoreUnavailable(detail)
        return StoreError(detail)
    return StoreUnavailable(f"InfluxDB {action} failed: {type(exc).__name__}: {exc}")


_CLIENT_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError)


# zlib level for write bodies: line protocol compresses ~26x at level 1 and ~28x at level 9,
# but level 9 costs ~2.8 us of CPU per point (14 ms per 5,000-point batch) and level 1 ~0.4 us.
GZIP_LEVEL = 1


class InfluxStore(Store):
    """Telemetry in one InfluxDB bucket, measurement `gpu_telemetry_v2` (see `store.schema`)."""

    def __init__(
        self,
        url: str,
        org: str,
        bucket: str,
        token: str,
        timeout_ms: int = 10_000,
        catalog_granularity_ns: int = catalog.DEFAULT_GRANULARITY_NS,
        write_catalog: bool = True,
    ) -> None:
        self.bucket = validate.text("bucket", bucket)
        # write_catalog=False only measures what the catalog costs (bench); readers need it.
        self._tracker = catalog.CatalogTracker(catalog_granularity_ns) if write_catalog else None
        self._org = org or "-"
        common: dict[str, Any] = {
            "url": url,
            "token": token,
            "org": self._org,
            "timeout": timeout_ms,
        }
        self._client = InfluxDBClient(**common, enable_gzip=True, retries=False)
        # Writes go through their own client without the client's gzip (fixed at level 9):
        # the body arrives compressed at GZIP_LEVEL with `Content-Encoding: gzip`.
        self._write_client = InfluxDBClient(**common, retries=False)
        self._write_service = WriteService(self._write_client.api_client)  # type: ignore[no-untyped-call]
        self._query_api = self._client.query_api()
        # The hot reads (catalog, latest values, raw pages) are InfluxQL on /query.
        self._v1 = QueryClient(url, self.bucket, token, timeout_ms)
        self._catalog = influx_catalog.CatalogReader(self._v1)
        self._hint = influx_points.PageHint()
        self._encoder = LineProtocolEncoder()
        self._encode_lock = threading.Lock()

    def write(self, batch: PointBatch) -> None:
        """Persist every point of `batch`; the same (uuid, metric, time_ns) twice is one point."""
        self.write_prepared(self.prepare(batch))

    def prepare(self, batch: PointBatch, parts: Sequence[PointBatch] = ()) -> PreparedWrite:
        """Validate `batch` and build its request body (gzip of the line protocol)."""
        if not len(batch):
            return PreparedWrite(batch, b"")
        schema.check_batch(batch)
        with self._encode_lock:
            lines = self._encoder.encode(batch)
        update = self._tracker.updates(batch, parts) if self._tracker else None
        if update:
            lines += b"\n" + influx_catalog.encode(update)
        body = gzip.compress(lines, compresslevel=GZIP_LEVEL, mtime=0)
        return PreparedWrite(batch, body, update)

    def write_prepared(self, prepared: PreparedWrite) -> None:
        """Send a prepared body to /api/v2/write; returns once InfluxDB acknowledged it."""
        if prepared.body is None:
            prepared = self.prepare(prepared.batch)
        if not prepared.body:
            return
        try:
            self._write_service.post_write(  # type: ignore[no-untyped-call]
                org=self._org,
                bucket=self.bucket,
                body=prepared.body,
                precision=WritePrecision.NS,
                content_encoding="gzip",
                content_type="text/plain; charset=utf-8",
            )
        except _CLIENT_ERRORS as exc:
            raise translate_error(exc, "write") from exc
        if self._tracker and prepared.catalog:
            self._tracker.confirm(prepared.catalog)

    def _rows(self, query: str) -> Iterator[Row]:
        """Yield each result row of a Flux query as {column: text}."""
        try:
            header: list[str] = []
            for row in self._query_api.query_csv(query, dialect=_DIALECT):
                if (len(row) > 2 and row[1] == "result") or row[:2] == ["error", "reference"]:
                    header = row
                    continue
                if header[:1] == ["error"]:
                    raise StoreError(f"Flux query failed: {row[0]}")
                yield dict(zip(header, row, strict=False))
        except _CLIENT_ERRORS as exc:
            raise translate_error(exc, "query") from exc

    def _summaries(self, tags: dict[str, str], extra: Sequence[str] = ()) -> list[GpuSummary]:
        """Return GPUs from the first and last point of each matching series, ordered by uuid."""
        first: dict[str, int] = {}
        for row in self._rows(flux.series_edge(self.bucket, "first", tags, extra)):
            t, uuid = flux.parse_time(row["_time"]), row[schema.TAG_UUID]
            first[uuid] = min(t, first.get(uuid, t))
        newest: dict[str, tuple[int, Row]] = {}
        stop = newest_bound_ns() + 1  # never a last_seen from the future
        for row in self._rows(flux.series_edge(self.bucket, "last", tags, extra, stop)):
            t, uuid = flux.parse_time(row["_time"]), row[schema.TAG_UUID]
            if uuid not in newest or t > newest[uuid][0]:
                newest[uuid] = (t, row)
        return [_summary(newest[u][1], first.get(u, t), t) for u, (t, _) in sorted(newest.items())]

    def list_gpus(
        self,
        hostname: str | None = None,
        model: str | None = None,
        limit: int = 100,
        after_uuid: str | None = None,
    ) -> list[GpuSummary]:
        """Return up to `limit` GPUs with data in catalog order, only those after `after_uuid`."""
        tags = _tags(hostname=validate.optional_text("hostname", hostname))
        limit = validate.positive("limit", limit)
        after = validate.optional_text("after_uuid", after_uuid)
        needle = validate.optional_text("model", model)
        models: list[str] = []
        if needle is not None:
            models = catalog.matching_models(self._catalog.model_names(), needle)
            if not models:
                return []
        if models and schema.TAG_HOSTNAME in tags:
            found = self._catalog.gpu_page(tags, validate.MAX_LIMIT, after)
            return [g for g in found if g.model in models][:limit]
        return self._catalog.gpu_page(tags, limit, after, models)

    def get_gpu(self, uuid: str) -> GpuSummary | None:
        """Return the GPU with this uuid, or None when it has no data."""
        return self._catalog.gpu(validate.text("uuid", uuid))

    def gpus_by_index(self, index: int, limit: int | None = None) -> list[GpuSummary]:
        """Return GPUs (on any host) whose host-local index is `index`, in catalog order."""
        tags = {schema.TAG_GPU: str(validate.index(index))}
        most = validate.MAX_LIMIT if limit is None else validate.positive("limit", limit)
        return self._catalog.gpu_page(tags, most, None)

    def page_names(self, kind: str, limit: int = 1000, after: str | None = None) -> list[str]:
        """Return up to `limit` names of one kind with data, after `after`, in catalog order."""
        if kind not in catalog.NAME_KINDS:
            raise InvalidArgument(f"kind must be one of {', '.join(catalog.NAME_KINDS)}")
        start = validate.optional_text("after", after)
        return self._catalog.names(kind, validate.positive("limit", limit), start)

    def backfill_catalog(self) -> int:
        """Build the catalog from the stored telemetry (one-off; O(data)); return GPUs found."""
        gpus = self._summaries({})
        records = [
            catalog.GpuRecord(
                (g.uuid, g.hostname, g.gpu, g.device, g.model, g.container, g.pod, g.namespace),
                g.first_seen_ns,
                g.first_seen_ns,
                g.last_seen_ns,
            )
            for g in gpus
        ]
        anchor = min((g.first_seen_ns for g in gpus), default=time.time_ns())
        names = [
            catalog.NameRecord(kind, name, anchor)
            for kind, tag in (("host", schema.TAG_HOSTNAME), ("metric", flux.METRIC),
                              ("model", schema.TAG_MODEL))
            for name in self._distinct(tag)
        ]  # fmt: skip
        for i in range(0, max(len(records), len(names)), 5_000):
            update = catalog.CatalogUpdate(
                tuple(records[i : i + 5_000]), tuple(names[i : i + 5_000])
            )
            if update:
                body = gzip.compress(influx_catalog.encode(update), GZIP_LEVEL, mtime=0)
                self.write_prepared(PreparedWrite(PointBatch(), body))
        return len(gpus)

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
        found = self.query_raw(uuid, start_ns, end_ns, metrics, limit, after)
        return [StoredPoint(m, t, v, s) for t, m, v, s in found]

    def query_raw(
        self,
        uuid: str,
        start_ns: int,
        end_ns: int,
        metrics: Sequence[str] | None = None,
        limit: int = 1000,
        after: tuple[int, str] | None = None,
    ) -> list[RawPoint]:
        """What `query_points` returns, as plain tuples (see `store.influx_points`)."""
        return self._page(uuid, start_ns, end_ns, metrics, limit, after)[1]

    def query_gpu_raw(
        self,
        uuid: str,
        start_ns: int,
        end_ns: int,
        metrics: Sequence[str] | None = None,
        limit: int = 1000,
        after: tuple[int, str] | None = None,
    ) -> tuple[GpuSummary | None, list[RawPoint]]:
        """`get_gpu` and `query_raw` in one request to InfluxDB (two statements)."""
        led, points = self._page(uuid, start_ns, end_ns, metrics, limit, after, gpu=True)
        gpu = influx_catalog.gpu_of(led[0])
        return gpu, points if gpu is not None else []

    def _page(
        self,
        uuid: str,
        start_ns: int,
        end_ns: int,
        metrics: Sequence[str] | None,
        limit: int,
        after: tuple[int, str] | None,
        gpu: bool = False,
    ) -> tuple[list[list[Series]], list[RawPoint]]:
        start, end = validate.time_range(start_ns, end_ns)
        uuid = validate.text("uuid", uuid)
        lead = [influx_catalog.gpu_statement(uuid)] if gpu else []
        return influx_points.page(
            self._v1,
            uuid,
            start,
            end,
            validate.metrics(metrics),
            validate.positive("limit", limit),
            validate.cursor(after),
            self._hint,
            lead,
        )

    def latest_of(
        self, uuids: Sequence[str], metrics: Sequence[str] | None = None
    ) -> dict[str, dict[str, StoredPoint]]:
        """Return the newest point of `metrics` (all when None) of each GPU in `uuids`."""
        page = validate.uuids(uuids)
        names = validate.metrics(metrics)
        if not page:
            return {}
        return influx_points.latest(self._v1, page, names, newest_bound_ns())

    def _distinct(self, tag: str) -> list[str]:
        return sorted(
            {
                row["_value"]
                for row in self._rows(flux.distinct(self.bucket, tag))
                if row.get("_value")
            }
        )

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
        query = flux.downsample(
            self.bucket,
            start,
            end,
            validate.text("uuid", uuid),
            validate.metrics(metrics),
            every,
            validate.aggregate(agg),
        )
        out = []
        for row in self._rows(query):
            stop = flux.parse_time(row["_time"])  # a window's stop, clipped to the range
            window = (stop - 1) // every * every
            out.append(WindowValue(row[flux.METRIC], window, float(row["_value"])))
        return sorted(out, key=lambda w: (w.time_ns, w.metric))

    def count_points(
        self, uuid: str | None = None, metric: str | None = None
    ) -> dict[tuple[str, str], int]:
        """Return the exact number of stored points per (uuid, metric), optionally filtered."""
        tags = _tags(uuid=validate.optional_text("uuid", uuid))
        query = flux.counts(self.bucket, tags, validate.optional_text("metric", metric))
        return {
            (row[schema.TAG_UUID], row[flux.METRIC]): int(row["_value"])
            for row in self._rows(query)
        }

    def ping(self) -> None:
        """Return when the store answers; raise StoreUnavailable when it does not."""
        try:
            ok = self._client.ping()
        except _CLIENT_ERRORS as exc:
            raise translate_error(exc, "ping") from exc
        if not ok:
            raise StoreUnavailable("InfluxDB does not answer /ping")

    def close(self) -> None:
        """Release connections; the store must not be used afterwards."""
        self._v1.close()
        self._write_client.close()  # type: ignore[no-untyped-call]
        self._client.close()  # type: ignore[no-untyped-call]


def _tags(**values: str | None) -> dict[str, str]:
    return {k: v for k, v in values.items() if v is not None}


def _summary(row: Row, first_ns: int, last_ns: int) -> GpuSummary:
    return GpuSummary(
        uuid=row[schema.TAG_UUID],
        hostname=row.get(schema.TAG_HOSTNAME, ""),
        gpu=int(row.get(schema.TAG_GPU) or 0),
        device=row.get(schema.TAG_DEVICE, ""),
        model=row.get(schema.TAG_MODEL, ""),
        first_seen_ns=first_ns,
        last_seen_ns=last_ns,
        container=row.get("container", ""),
        pod=row.get("pod", ""),
        namespace=row.get("namespace", ""),
    )

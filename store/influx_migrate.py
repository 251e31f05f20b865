"""Copy InfluxDB telemetry of the legacy layout into the current one (`migrate-layout`).

What: every point of `schema.LEGACY_MEASUREMENT` (a series per (GPU, metric), the metric a
tag, fields `value` and `source_time`) is read back with Flux and written again through
`InfluxStore.write`, the only writer of the current layout (`schema.MEASUREMENT`: a series per
GPU, fields `<metric>` and `<metric>@source_time`; it also writes the GPU catalog's records).
The legacy data stays: deleting it is the operator's call once the copy is checked
(`delete_advice` says how).

Why: the store reads the current layout only, so data written before the layout change
(see `store.schema` for why the layout changed) is invisible until it is copied.

Cost: O(legacy data): every legacy point is read once and written once. Memory is bounded on
both sides: the legacy data is read in time windows (`migrate`), each sized so it holds about
`WINDOW_TARGET_POINTS` points (influxd holds one window's pivoted rows), and the points are
written in batches of at most `batch_points` (this process holds one batch).

Idempotence: a point of the current layout is identified by its series (the GPU's tags), field
and time, and InfluxDB overwrites a point written again there, so a second run rewrites the
same points and duplicates nothing. The migration only reads the legacy measurement, so it
may run while collectors write the current layout; legacy points written after its first
query are copied by the next run. A legacy point without `value` or `source_time`, or whose
GPU or metric the current schema refuses (`store.schema`), is skipped and counted.

Flux: the subset InfluxDB 1.8 (Flux 0.65) runs (`store.flux`); every value enters a query
through `flux.string()` / `flux.time()`. 1.8 reads `range(stop:)` inclusively, so each window
also filters `r._time < stop`: a point on a window's edge is read once.
"""

from __future__ import annotations

import logging
import math
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field

from proto.batch import Gpu
from proto.codec import BatchBuilder
from store import flux, schema
from store.base import InvalidBatch
from store.influx import InfluxStore, Row

log = logging.getLogger(__name__)

S = 1_000_000_000
FIRST_WINDOW_NS = S  # the first window; later ones are sized by what the last one held
MIN_WINDOW_NS = 1_000_000  # 1 ms: a fleet's points spread over its sampling interval
MAX_WINDOW_NS = 7 * 86_400 * S  # also how fast a gap in the data is crossed
WINDOW_TARGET_POINTS = 100_000  # legacy points a window should hold (influxd pivots them)
MAX_GROWTH = 4  # a window is at most this many times longer than the previous one
_CHECKED_MAX = 100_000  # descriptors and metric names remembered as valid / invalid


@dataclass(frozen=True)
class Migrated:
    """What one run did: points copied, legacy points skipped, the legacy data's time span."""

    points: int
    skipped: int
    first_ns: int | None  # the oldest legacy point's time (None: no legacy data)
    last_ns: int | None  # the newest one's


def migrate_layout(store: InfluxStore, batch_points: int = 5000) -> int:
    """Copy every legacy point into the current layout; return the points copied.

    Skipped points (see the module docstring) are logged; `migrate` also returns their count.
    """
    done = migrate(store, batch_points)
    if done.skipped:
        log.warning("migrate-layout skipped %d legacy points (see earlier warnings)", done.skipped)
    return done.points


def migrate(
    store: InfluxStore,
    batch_points: int = 5000,
    target_points: int = WINDOW_TARGET_POINTS,
) -> Migrated:
    """Copy the legacy measurement window by window; return what was copied and skipped."""
    if batch_points < 1 or target_points < 1:
        raise ValueError("batch_points and target_points must be positive")
    first, last = legacy_span(store)
    if first is None or last is None:
        return Migrated(0, 0, None, None)
    writer = _BatchWriter(store, batch_points)
    start, window = first, FIRST_WINDOW_NS
    while start <= last:
        stop = min(start + window, last + 1)
        read = writer.add(store._rows(window_query(store.bucket, start, stop)))
        start, window = stop, next_window(window, read, target_points)
    writer.flush()
    return Migrated(writer.points, writer.skipped, first, last)


def legacy_span(store: InfluxStore) -> tuple[int | None, int | None]:
    """Return the times of the oldest and newest legacy point (None, None when there is none)."""
    edges: list[int | None] = []
    for edge, pick in (("first", "min"), ("last", "max")):
        times = [
            flux.parse_time(r["_time"]) for r in store._rows(edge_query(store.bucket, edge, pick))
        ]
        edges.append(times[0] if times else None)
    return edges[0], edges[1]


def _legacy_filter() -> str:
    """Return the `filter` stage keeping the legacy measurement's two fields."""
    fields = " or ".join(
        f"r._field == {flux.string(f)}" for f in (schema.FIELD_VALUE, schema.FIELD_SOURCE_TIME)
    )
    measurement = f"r._measurement == {flux.string(schema.LEGACY_MEASUREMENT)}"
    return f"\n  |> filter(fn: (r) => {measurement} and ({fields}))"


def edge_query(bucket: str, edge: str, pick: str) -> str:
    """Return the query of the oldest (`first`, `min`) or newest (`last`, `max`) legacy time.

    Each series' edge point, its time alone, then one row over all series: influxd answers
    one row, however many series the legacy data has.
    """
    if (edge, pick) not in (("first", "min"), ("last", "max")):
        raise ValueError(f"{edge}/{pick}")
    return (
        flux.source(bucket, 0, flux.ALL_TIME_STOP_NS)
        + _legacy_filter()
        + f'\n  |> {edge}()\n  |> keep(columns: ["_time"])\n  |> group()'
        + f'\n  |> {pick}(column: "_time")'
    )


def window_query(bucket: str, start_ns: int, stop_ns: int) -> str:
    """Return the legacy points in [start_ns, stop_ns), one row per point (fields as columns)."""
    return (
        flux.source(bucket, start_ns, stop_ns)
        + _legacy_filter()
        + f"\n  |> filter(fn: (r) => r._time < {flux.time(stop_ns)})"  # 1.8: stop is inclusive
        + '\n  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'
    )


def next_window(window_ns: int, read: int, target_points: int) -> int:
    """Return the next window's length: the last one's, scaled to hold `target_points`.

    Grows at most MAX_GROWTH times (a sparse stretch may be followed by a dense one) and
    stays within [MIN_WINDOW_NS, MAX_WINDOW_NS].
    """
    scaled = window_ns * MAX_GROWTH if read == 0 else window_ns * target_points // read
    return max(MIN_WINDOW_NS, min(scaled, window_ns * MAX_GROWTH, MAX_WINDOW_NS))


def delete_advice(bucket: str, stop_ns: int) -> str:
    """Return how an operator deletes the legacy measurement (2.x and 1.x) once checked."""
    stop = flux.time(stop_ns).split(".")[0] + "Z"
    predicate = f'_measurement="{schema.LEGACY_MEASUREMENT}"'
    database = bucket.split("/")[0]
    drop = f'DROP MEASUREMENT "{schema.LEGACY_MEASUREMENT}"'
    return (
        "after checking the copy, delete the legacy measurement: InfluxDB 2.x: "
        f"influx delete --bucket {shlex.quote(bucket)} --start 1970-01-01T00:00:00Z "
        f"--stop {stop} --predicate {shlex.quote(predicate)}; InfluxDB 1.x: "
        f"influx -database {shlex.quote(database)} "
        f"-execute {shlex.quote(drop)}"
    )


@dataclass
class _BatchWriter:
    """Turns legacy rows into PointBatches of at most `batch_points` and writes each one."""

    store: InfluxStore
    batch_points: int
    points: int = 0
    skipped: int = 0
    _builder: BatchBuilder = field(default_factory=BatchBuilder)
    _gpus: dict[schema.GpuFields, Gpu] = field(default_factory=dict)  # one object a GPU
    _valid: dict[object, bool] = field(default_factory=dict)

    def add(self, rows: Iterable[Row]) -> int:
        """Queue (and write, batch by batch) the points of `rows`; return the rows read."""
        read = 0
        for row in rows:
            read += 1
            point = self._point(row)
            if point is None:
                self.skipped += 1
                continue
            gpu, metric, time_ns, value, source_ns = point
            gpu = self._gpus.setdefault(gpu.descriptor, gpu)
            self._builder.add(gpu, metric, time_ns, value, source_ns)
            if len(self._builder) >= self.batch_points:
                self.flush()
        return read

    def flush(self) -> None:
        """Write the queued points (if any) and start an empty batch."""
        batch = self._builder.build()
        if len(batch):
            self.store.write(batch)
            self.points += len(batch)
        self._gpus = {}

    def _point(self, row: Row) -> tuple[Gpu, str, int, float, int] | None:
        """Return the row's point, or None (logged) when the current layout cannot hold it."""
        value, source = row.get(schema.FIELD_VALUE, ""), row.get(schema.FIELD_SOURCE_TIME, "")
        metric = row.get(schema.TAG_METRIC, "")
        try:
            gpu = Gpu(
                uuid=row.get(schema.TAG_UUID, ""),
                hostname=row.get(schema.TAG_HOSTNAME, ""),
                gpu=int(row.get(schema.TAG_GPU, "")),
                device=row.get(schema.TAG_DEVICE, ""),
                model=row.get(schema.TAG_MODEL, ""),
                container=row.get("container", ""),
                pod=row.get("pod", ""),
                namespace=row.get("namespace", ""),
            )
            point = (gpu, metric, flux.parse_time(row["_time"]), float(value), int(source))
        except (KeyError, ValueError):
            log.debug("legacy point without value, source_time or a GPU index: %s", row)
            return None
        if not math.isfinite(point[3]):
            return None
        if not (self._storable(gpu.descriptor, gpu) and self._storable(metric, metric)):
            return None
        return point

    def _storable(self, key: object, what: Gpu | str) -> bool:
        """Whether the current schema accepts this GPU or metric name (remembered per key)."""
        known = self._valid.get(key)
        if known is None:
            try:
                schema.check_gpu(what) if isinstance(what, Gpu) else schema.check_metric(what)
                known = True
            except InvalidBatch as exc:
                log.warning("legacy points skipped: %s", exc)
                known = False
            if len(self._valid) >= _CHECKED_MAX:
                self._valid.clear()
            self._valid[key] = known
        return known

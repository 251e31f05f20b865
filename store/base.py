"""The store contract: what the collector writes and the gateway reads, independent of backend.

Every implementation (SQLite, InfluxDB) passes the same contract tests in `tests/store/`.
Times are integer nanoseconds since the Unix epoch (UTC). A GPU is identified by its `uuid`;
its host-local `gpu` index repeats on every host and is never an identity.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

from proto.batch import PointBatch

if TYPE_CHECKING:
    from store.catalog import CatalogUpdate

# A point stamped further ahead of the clock is never a reader's "newest": not a GPU's
# latest value, not its last_seen. The collector dead-letters such points
# (`collector.future`, same default); this guards points stored before or by other writers.
MAX_FUTURE_SKEW_S = 300.0

Aggregate = Literal["mean", "min", "max", "last"]
AGGREGATES: tuple[Aggregate, ...] = ("mean", "min", "max", "last")


def newest_bound_ns() -> int:
    """The newest time a reader may answer as "latest" or last_seen now (clock + skew)."""
    return time.time_ns() + int(MAX_FUTURE_SKEW_S * 1e9)


class StoreError(Exception):
    """A store operation failed and retrying the same call will not help."""

    retriable = False


class StoreUnavailable(StoreError):
    """The store cannot be reached or answered with a transient failure; retry later."""

    retriable = True


class InvalidArgument(StoreError, ValueError):
    """A caller-supplied value (uuid, metric, time, limit, ...) was rejected before any I/O."""


class InvalidBatch(StoreError, ValueError):
    """A batch holds a value the schema cannot represent (e.g. a control character in a tag)."""


@dataclass(frozen=True, slots=True)
class GpuSummary:
    """One GPU with data: its descriptor (from its newest point) and the time span it was seen."""

    uuid: str
    hostname: str
    gpu: int
    device: str
    model: str
    first_seen_ns: int
    last_seen_ns: int
    container: str = ""
    pod: str = ""
    namespace: str = ""


class StoredPoint(NamedTuple):
    """One stored point of one GPU; `source_time_ns` is the CSV's own timestamp (0 when unknown)."""

    metric: str
    time_ns: int
    value: float
    source_time_ns: int


class WindowValue(NamedTuple):
    """One downsampled value: `time_ns` is the window start, aligned to the epoch by `every_ns`."""

    metric: str
    time_ns: int
    value: float


RawPoint = tuple[int, str, float, int]
"""One point as a plain tuple: (time_ns, metric, value, source_time_ns), what a page shows."""


class PointCursor(NamedTuple):
    """Keyset cursor for `query_points`: the (time_ns, metric) of the last point already seen."""

    time_ns: int
    metric: str


CountMap = Mapping[tuple[str, str], int]


@dataclass(frozen=True, slots=True)
class PreparedWrite:
    """A batch made ready for `Store.write_prepared` by `Store.prepare`.

    A write has a CPU-bound half that needs no store (validation, encoding the request body)
    and an I/O half. Splitting them lets the collector prepare the next batch while the
    previous one is being written. `body` is the store's encoded request (None when the
    store encodes nothing ahead, e.g. SQLite binds the batch's columns directly).
    """

    batch: PointBatch
    body: bytes | None = None
    catalog: CatalogUpdate | None = None  # catalog records in `body`, confirmed once written


class Store(abc.ABC):
    """A telemetry store; implementations document their own thread-safety."""

    @abc.abstractmethod
    def write(self, batch: PointBatch) -> None:
        """Persist every point of `batch`; the same (uuid, metric, time_ns) twice is one point."""

    def prepare(self, batch: PointBatch, parts: Sequence[PointBatch] = ()) -> PreparedWrite:
        """Do the part of `write(batch)` that needs no I/O; InvalidBatch when unstorable.

        `parts`: the records `batch` was merged from, in order, when it was (the collector's
        flush); a store may do per-record work on them instead (the catalog's decisions:
        `store.catalog.CatalogTracker.updates`). Thread-safe in every store. The default
        prepares nothing: `write_prepared` then does all of `write`.
        """
        return PreparedWrite(batch)

    def write_prepared(self, prepared: PreparedWrite) -> None:
        """Finish the write `prepare` started: same result and errors as `write(batch)`."""
        self.write(prepared.batch)

    @abc.abstractmethod
    def list_gpus(
        self,
        hostname: str | None = None,
        model: str | None = None,
        limit: int = 100,
        after_uuid: str | None = None,
    ) -> list[GpuSummary]:
        """Return up to `limit` GPUs with data in catalog order, only those after `after_uuid`.

        Catalog order is (shard, uuid) with the shard a stable hash of the uuid
        (`store.catalog.gpu_key`): pages read only the catalog shards they cover.
        `hostname` matches exactly; `model` is a case-insensitive substring of the model.
        `last_seen_ns` lags the newest point by less than the catalog granularity.
        """

    @abc.abstractmethod
    def get_gpu(self, uuid: str) -> GpuSummary | None:
        """Return the GPU with this uuid, or None when it has no data."""

    @abc.abstractmethod
    def gpus_by_index(self, index: int, limit: int | None = None) -> list[GpuSummary]:
        """Return GPUs (on any host) whose host-local index is `index`, in catalog order.

        At most `limit` of them when given (a lookup only needs to know "one or several").
        """

    @abc.abstractmethod
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

    def query_raw(
        self,
        uuid: str,
        start_ns: int,
        end_ns: int,
        metrics: Sequence[str] | None = None,
        limit: int = 1000,
        after: tuple[int, str] | None = None,
    ) -> list[RawPoint]:
        """Return what `query_points` returns, as (time_ns, metric, value, source_time_ns) tuples.

        Same bounds, order, limit and cursor. The gateway's page path: a store overrides it
        when plain tuples cost less to build than `StoredPoint`s.
        """
        found = self.query_points(uuid, start_ns, end_ns, metrics, limit, after)
        return [(p.time_ns, p.metric, p.value, p.source_time_ns) for p in found]

    def query_gpu_raw(
        self,
        uuid: str,
        start_ns: int,
        end_ns: int,
        metrics: Sequence[str] | None = None,
        limit: int = 1000,
        after: tuple[int, str] | None = None,
    ) -> tuple[GpuSummary | None, list[RawPoint]]:
        """Return `get_gpu(uuid)` and, when it is a GPU, its `query_raw` page (else no points).

        The telemetry page's read: a store whose reads are network round trips overrides it
        to make both in one (InfluxDB).
        """
        gpu = self.get_gpu(uuid)
        points = self.query_raw(uuid, start_ns, end_ns, metrics, limit, after) if gpu else []
        return gpu, points

    def latest(self, uuid: str) -> dict[str, StoredPoint]:
        """Return the newest point of each metric of this GPU (empty when unknown).

        Points stamped after `newest_bound_ns()` are never the newest (nor a GpuSummary's
        last_seen; a GPU with no other point is not listed).
        """
        return self.latest_of([uuid]).get(uuid, {})

    @abc.abstractmethod
    def latest_of(
        self, uuids: Sequence[str], metrics: Sequence[str] | None = None
    ) -> dict[str, dict[str, StoredPoint]]:
        """Return `latest` of each GPU in `uuids`, only `metrics` (all when None): uuid -> values.

        One read for the whole page (its cost follows len(uuids) x metrics, never the fleet
        or the history); at most `store.validate.MAX_LIMIT` uuids. A GPU that is unknown or
        has none of `metrics` is absent from the answer.
        """

    @abc.abstractmethod
    def page_names(self, kind: str, limit: int = 1000, after: str | None = None) -> list[str]:
        """Return up to `limit` names of one kind with data, after `after`, in catalog order.

        `kind` is "host", "metric" or "model"; catalog order is (shard, name) with the shard
        a stable hash of the name (`store.catalog.name_key`; metrics and models have one
        shard, so they come sorted).
        """

    def list_hosts(self) -> list[str]:
        """Return every hostname with data, sorted (reads the whole catalog: small fleets)."""
        return sorted(self._all_names("host"))

    def list_metrics(self) -> list[str]:
        """Return every metric name with data, sorted."""
        return sorted(self._all_names("metric"))

    def _all_names(self, kind: str) -> list[str]:
        out: list[str] = []
        while True:
            page = self.page_names(kind, 10_000, out[-1] if out else None)
            out += page
            if len(page) < 10_000:
                return out

    @abc.abstractmethod
    def backfill_catalog(self) -> int:
        """Build the catalog from the stored telemetry (one-off; O(data)); return GPUs found."""

    @abc.abstractmethod
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

    @abc.abstractmethod
    def count_points(
        self, uuid: str | None = None, metric: str | None = None
    ) -> dict[tuple[str, str], int]:
        """Return the exact number of stored points per (uuid, metric), optionally filtered."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Return when the store answers; raise StoreUnavailable when it does not."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; the store must not be used afterwards."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

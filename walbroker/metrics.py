"""The broker's Prometheus metrics, in a registry per broker (names as the dashboards expect)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

NS = "gpu_telemetry_broker"

# A snapshot for one scrape: (group, topic, partition, committed, log_end, lag_seconds).
LagRow = tuple[str, str, int, int, int, float]
# (topic, partition, log_start, log_end)
ExtentRow = tuple[str, int, int, int]


class BrokerMetrics:
    """One broker's counters, gauges and histograms; lag and offsets are computed at scrape time."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.enqueued = Counter(
            f"{NS}_messages_enqueued", "Points appended to the log.", ["topic"], registry=r
        )
        self.delivered = Counter(
            f"{NS}_messages_delivered",
            "Points sent to group members.",
            ["topic", "group"],
            registry=r,
        )
        self.queue_depth = Gauge(
            f"{NS}_queue_depth", "Batches waiting for the log writer.", registry=r
        )
        self.subscribers = Gauge(
            f"{NS}_subscribers", "Connected group members.", ["group", "role"], registry=r
        )
        self.commit_seconds = Histogram(
            f"{NS}_fsync_seconds",
            "Duration of one group commit (LMDB transaction incl. fsync).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.commit_records = Histogram(
            f"{NS}_group_commit_records",
            "Records written per group commit.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.deleted = Counter(
            f"{NS}_retention_deleted_points",
            "Points deleted by retention.",
            ["topic", "reason"],
            registry=r,
        )
        self.duplicates = Counter(
            f"{NS}_producer_duplicates",
            "Retried batches acknowledged again without a second append.",
            ["topic"],
            registry=r,
        )
        self.rejected = Counter(
            f"{NS}_publish_rejected", "Batches refused, by gRPC status code.", ["code"], registry=r
        )
        self.log_bytes = Gauge(f"{NS}_log_bytes", "Bytes of stored records.", registry=r)
        self.disk_budget = Gauge(
            f"{NS}_disk_budget_bytes", "The retention byte budget.", registry=r
        )
        self.commits = Counter(
            f"{NS}_offset_commits", "Offset commits by result.", ["group", "result"], registry=r
        )
        self.rebalances = Counter(f"{NS}_rebalances", "Generation changes.", ["group"], registry=r)
        self.admin_actions = Counter(
            f"{NS}_admin_actions", "Admin operations.", ["action"], registry=r
        )
        self._limits(r)

    def _limits(self, r: CollectorRegistry) -> None:
        """Gauges and counters of the bounds in docs/limits.md."""
        self.hot_buffer_bytes = Gauge(
            f"{NS}_hot_buffer_bytes", "Payload bytes of recent records kept in memory.", registry=r
        )
        self.queue_bytes = Gauge(
            f"{NS}_queue_bytes", "Payload bytes waiting for the log writer.", registry=r
        )
        self.queue_clients = Gauge(
            f"{NS}_queue_clients",
            "Clients with batches waiting for the log writer (each is served in turn).",
            registry=r,
        )
        self.disk_free = Gauge(
            f"{NS}_disk_free_bytes", "Free bytes on the data directory's file system.", registry=r
        )
        self.topics = Gauge(f"{NS}_topics", "Topics in the log.", registry=r)
        self.streams = Gauge(
            f"{NS}_open_streams", "Open Publish and Consume streams.", ["method"], registry=r
        )
        self.connections = Gauge(
            f"{NS}_open_connections",
            "TCP connections open to the gRPC port (sampled every second; --max-connections).",
            registry=r,
        )
        self.connection_limit_seconds = Counter(
            f"{NS}_connection_limit_seconds",
            "Seconds the gRPC port had --max-connections open (new connections closed at once).",
            registry=r,
        )
        self.refused = Counter(
            f"{NS}_refused_calls",
            "Calls refused at the door, by limit.",
            ["limit"],
            registry=r,
        )
        self.throttled = Counter(
            f"{NS}_publish_throttled",
            "Publish requests held back by the per-client byte rate.",
            registry=r,
        )
        self.throttle_seconds = Counter(
            f"{NS}_publish_throttle_seconds",
            "Seconds Publish streams were held back by the per-client byte rate.",
            registry=r,
        )
        self.publish_paused_seconds = Counter(
            f"{NS}_publish_paused_seconds",
            "Seconds Publish streams were left unread after a batch refused for lack of room.",
            registry=r,
        )
        self.invalid = Counter(
            f"{NS}_invalid_requests",
            "Requests refused as INVALID_ARGUMENT before reaching the log, by method.",
            ["method"],
            registry=r,
        )
        self.consume_queue_bytes = Gauge(
            f"{NS}_consume_queue_bytes",
            "Bytes of answers (assignments, commit acks) queued for Consume streams, not yet sent.",
            registry=r,
        )
        self.unacked_pauses = Counter(
            f"{NS}_unacked_pauses",
            "Times delivery to a member paused at --max-unacked-points until it committed.",
            registry=r,
        )
        self.groups = Gauge(
            f"{NS}_groups",
            "Known groups: with a live member, committed offsets or progress (--max-groups).",
            registry=r,
        )
        self.groups_expired = Counter(
            f"{NS}_groups_expired",
            "Empty groups forgotten after --group-retention-s (or deleted by an admin).",
            ["reason"],
            registry=r,
        )
        self.retention_ignored_groups = Gauge(
            f"{NS}_retention_ignored_groups",
            "Idle empty groups `block` retention no longer waits for.",
            registry=r,
        )

    def declare_topic(self, topic: str) -> None:
        """Export a topic's counters at 0 from the start, so dashboards see the series."""
        for reason in ("size", "age"):
            self.deleted.labels(topic, reason)
        self.enqueued.labels(topic)
        self.duplicates.labels(topic)

    def forget_topic(self, topic: str) -> None:
        """Stop exporting a deleted topic's series."""
        for metric, labels in (
            (self.deleted, [(topic, "size"), (topic, "age")]),
            (self.enqueued, [(topic,)]),
            (self.duplicates, [(topic,)]),
        ):
            for lv in labels:
                with contextlib.suppress(KeyError):  # never exported
                    metric.remove(*lv)
        for key in [k for k in self.delivered._metrics if k[0] == topic]:
            self.delivered.remove(*key)

    def forget_group(self, group: str) -> None:
        """Stop exporting a forgotten group's series (expired, deleted)."""
        for metric, at in (
            (self.delivered, 1),
            (self.subscribers, 0),
            (self.commits, 0),
            (self.rebalances, 0),
        ):
            for key in [k for k in list(metric._metrics) if k[at] == group]:
                with contextlib.suppress(KeyError):
                    metric.remove(*key)

    def add_offsets_collector(
        self, extents: Callable[[], Iterable[ExtentRow]], lags: Callable[[], Iterable[LagRow]]
    ) -> None:
        """Register scrape-time gauges for log extents and consumer lag."""
        self.registry.register(_OffsetsCollector(extents, lags))


class _OffsetsCollector(Collector):
    def __init__(
        self, extents: Callable[[], Iterable[ExtentRow]], lags: Callable[[], Iterable[LagRow]]
    ) -> None:
        self._extents = extents
        self._lags = lags

    def collect(self) -> Iterable[GaugeMetricFamily]:
        tp = ["topic", "partition"]
        start = GaugeMetricFamily(f"{NS}_log_start_offset", "First offset still stored.", labels=tp)
        end = GaugeMetricFamily(f"{NS}_log_end_offset", "Offset the next point gets.", labels=tp)
        for topic, p, s, e in self._extents():
            start.add_metric([topic, str(p)], s)
            end.add_metric([topic, str(p)], e)
        gtp = ["group", *tp]
        committed = GaugeMetricFamily(
            f"{NS}_committed_offset", "Committed offset of a group.", labels=gtp
        )
        lag = GaugeMetricFamily(
            f"{NS}_consumer_lag_points", "Log end offset minus committed offset.", labels=gtp
        )
        lag_s = GaugeMetricFamily(
            f"{NS}_consumer_lag_seconds", "Age of the oldest point not yet committed.", labels=gtp
        )
        for group, topic, p, c, e, age in self._lags():
            labels = [group, topic, str(p)]
            committed.add_metric(labels, c)
            lag.add_metric(labels, max(e - c, 0))
            lag_s.add_metric(labels, age)
        yield from (start, end, committed, lag, lag_s)

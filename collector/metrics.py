"""The collector's Prometheus metrics, registered on the registry the caller passes in.

Names follow SPEC §7 (the reference dashboards use them): "messages" are points, since
walbroker offsets count points.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

WRITE_ERROR_KINDS = ("unavailable", "invalid", "error", "dead_letter")
DEAD_LETTER_REASONS = ("decode", "invalid", "future_time")
COMMIT_RESULTS = ("ok", "refused", "sent")
FLUSH_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class CollectorMetrics:
    """Points received, flushed, held and dead-lettered; write errors; store state; commits."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.received = Counter(
            "gpu_telemetry_collector_messages_received_total",
            "Points received from the broker (redeliveries included).",
            registry=registry,
        )
        self.flushed = Counter(
            "gpu_telemetry_collector_messages_flushed_total",
            "Points written to the store and then committed.",
            registry=registry,
        )
        self.backlog = Gauge(
            "gpu_telemetry_collector_backlog",
            "Points received and held, not yet written to the store.",
            registry=registry,
        )
        self.flush_latency = Histogram(
            "gpu_telemetry_collector_flush_latency_seconds",
            "Time from the start of a flush (store write, retries included) to its commit.",
            buckets=FLUSH_BUCKETS_S,
            registry=registry,
        )
        self.write_errors = Counter(
            "gpu_telemetry_collector_write_errors_total",
            "Failed flushes by kind: unavailable, error, dead_letter (all retried), invalid.",
            ["kind"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            "gpu_telemetry_collector_dead_lettered_total",
            "Points not stored, their record sent to the dead-letter topic, by reason "
            "(decode, invalid, future_time).",
            ["reason"],
            registry=registry,
        )
        self.store_up = Gauge(
            "gpu_telemetry_collector_store_up",
            "1 while the store accepts writes, 0 after repeated failures.",
            registry=registry,
        )
        self.commits = Counter(
            "gpu_telemetry_collector_commits_total",
            "Offset commits after a flush: ok or refused (then redelivered, rewritten) when waited "
            "for; sent when not (a refusal is then logged by the consumer).",
            ["result"],
            registry=registry,
        )
        # Export every label value at 0 so alerts and dashboards see the series from the start.
        for kind in WRITE_ERROR_KINDS:
            self.write_errors.labels(kind=kind)
        for reason in DEAD_LETTER_REASONS:
            self.dead_lettered.labels(reason=reason)
        for result in COMMIT_RESULTS:
            self.commits.labels(result=result)
        self._lag = _PartitionLag()
        registry.register(self._lag)

    def watch_lag(self, topic: str, lag: Callable[[], dict[int, int]]) -> None:
        """Export `lag()` (per owned partition) as the consumer-lag gauge at every scrape."""
        self._lag.source = (topic, lag)


class _PartitionLag(Collector):
    """`gpu_telemetry_collector_consumer_lag_records`, read from the consumer when scraped.

    On Kafka the collector is the only one who can tell (walbroker's broker exports lag per
    group and partition itself, in points, so there the walbroker consumer reports none).
    """

    def __init__(self) -> None:
        self.source: tuple[str, Callable[[], dict[int, int]]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "gpu_telemetry_collector_consumer_lag_records",
            "Log end offset minus committed offset per owned partition, in records "
            "(Kafka transport; one record is one published batch).",
            labels=["topic", "partition"],
        )
        if self.source is not None:
            topic, lag = self.source
            for partition, records in sorted(lag().items()):
                family.add_metric([topic, str(partition)], records)
        yield family

"""The streamer's Prometheus metrics, created on a registry the caller passes in.

Nothing registers at import time: each `StreamerMetrics` registers its collectors on
the registry it is given (the default registry in production, a fresh
`CollectorRegistry()` per test, so tests never collide on duplicate names).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

# Seal-to-acknowledgement times of a batch: a few ms with group commit, seconds under backpressure.
# The reasons of the per-target counters (`ScrapeMetrics.forget` drops each of a target's).
SCRAPE_ERRORS = ("timeout", "connection", "http_status", "too_large", "bad_response", "bad_url")
SKIPS = ("busy", "late")
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class StreamerMetrics:
    """Rows read, rejected and kept with a warning (by reason); points published; the group.

    `batch_pending` is a gauge the runner binds to its producer (`set_function`).
    """

    def __init__(
        self,
        registry: CollectorRegistry = REGISTRY,
        reject_reasons: Iterable[str] = (),
        warning_reasons: Iterable[str] = (),
    ) -> None:
        self.rows_read = Counter(
            "gpu_telemetry_streamer_rows_read_total",
            "CSV data rows read, counted once per pass (rejected rows included).",
            registry=registry,
        )
        self.rows_rejected = Counter(
            "gpu_telemetry_streamer_rows_rejected_total",
            "CSV rows skipped by validation, per pass, by reason.",
            ["reason"],
            registry=registry,
        )
        self.row_warnings = Counter(
            "gpu_telemetry_streamer_row_warnings_total",
            "CSV rows kept despite a defect (bad source timestamp or labels), per pass, by reason.",
            ["reason"],
            registry=registry,
        )
        # Export every known reason at 0 so dashboards and alerts see the series from the start.
        for reason in reject_reasons:
            self.rows_rejected.labels(reason=reason)
        for reason in warning_reasons:
            self.row_warnings.labels(reason=reason)
        self.published = Counter(
            "gpu_telemetry_streamer_items_published",
            "Points the broker acknowledged (appended, or already appended on a retry).",
            registry=registry,
        )
        self.backpressure = Counter(
            "gpu_telemetry_streamer_backpressure",
            "Publish interruptions retried after a backoff (RESOURCE_EXHAUSTED, UNAVAILABLE, ...).",
            registry=registry,
        )
        self.batch_pending = Gauge(
            "gpu_telemetry_streamer_batch_pending",
            "Points handed to the producer and not yet acknowledged.",
            registry=registry,
        )
        self.publish_latency = Histogram(
            "gpu_telemetry_streamer_publish_latency_seconds",
            "Seconds from sealing a batch to its acknowledgement (retries included).",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.partitions_owned = Gauge(
            "gpu_telemetry_streamer_partitions_owned",
            "Partitions (and so GPUs) this streamer owns in its producer group.",
            registry=registry,
        )
        self.passes_completed = Counter(
            "gpu_telemetry_streamer_partition_passes",
            "Passes over one partition's rows completed by this streamer.",
            registry=registry,
        )


class ScrapeMetrics:
    """Per-target scrape health (as Prometheus names its own) and skipped samples by reason."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.up = Gauge(
            "gpu_telemetry_scrape_up",
            "1 if the target's last scrape succeeded, 0 if it failed (targets this streamer owns).",
            ["target"],
            registry=registry,
        )
        self.duration = Gauge(
            "gpu_telemetry_scrape_duration_seconds",
            "Seconds the target's last scrape took.",
            ["target"],
            registry=registry,
        )
        self.samples = Gauge(
            "gpu_telemetry_scrape_samples",
            "Samples of the target's last scrape that were published.",
            ["target"],
            registry=registry,
        )
        self.errors = Counter(
            "gpu_telemetry_scrape_errors",
            "Failed scrapes by target and reason (timeout, connection, http_status, too_large, "
            "bad_response, bad_url); target file or dns: discovery failures and refused URLs.",
            ["target", "reason"],
            registry=registry,
        )
        self.skipped = Counter(
            "gpu_telemetry_scrape_skipped",
            "Scheduled scrapes not started, by reason: busy (the target's previous scrape was "
            "still running) or late (the loop reached the tick after the next one had passed).",
            ["target", "reason"],
            registry=registry,
        )
        self.rejected = Counter(
            "gpu_telemetry_scrape_samples_rejected",
            "Samples skipped by reason (no_gpu, value_not_finite, bad_labels, ...).",
            ["reason"],
            registry=registry,
        )
        self.targets = Gauge(
            "gpu_telemetry_scrape_targets",
            "Targets known (discovered) and owned (scraped by this streamer).",
            ["state"],
            registry=registry,
        )
        self.series = Gauge(
            "gpu_telemetry_scrape_series",
            "GPUs and metric names remembered across scrapes (bound: --scrape-max-series).",
            ["kind"],
            registry=registry,
        )
        self.series_resets = Counter(
            "gpu_telemetry_scrape_series_resets",
            "Times the remembered GPUs and metric names started afresh at the bound.",
            registry=registry,
        )
        self.scrape_seconds = Histogram(
            "gpu_telemetry_scrape_seconds",
            "Seconds a scrape took, every target (failed ones included, up to the timeout).",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.scrape_lag = Histogram(
            "gpu_telemetry_scrape_start_delay_seconds",
            "Seconds a scrape started after its scheduled tick (scheduling and worker wait).",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )

    def forget(self, target: str) -> None:
        """Drop a target's series (it moved to another streamer or went away).

        Its counters too: with targets that come and go (the pods behind a DNS name) they
        would otherwise pile up for ever. A counter that comes back starts at 0, which
        Prometheus' rate() reads as the reset it is.
        """
        for gauge in (self.up, self.duration, self.samples):
            with contextlib.suppress(KeyError):
                gauge.remove(target)
        for counter, reasons in ((self.errors, SCRAPE_ERRORS), (self.skipped, SKIPS)):
            for reason in reasons:
                with contextlib.suppress(KeyError):
                    counter.remove(target, reason)

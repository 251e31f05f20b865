"""The streamer's Prometheus metrics, created on a registry the caller passes in.

Nothing registers at import time: each `StreamerMetrics` registers its collectors on
the registry it is given (the default registry in production, a fresh
`CollectorRegistry()` per test, so tests never collide on duplicate names).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Counter


class StreamerMetrics:
    """Counters of rows read, rejected (by reason) and kept with a warning (by reason)."""

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

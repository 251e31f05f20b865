"""Each pass counts rows read and rejected by reason, and logs each reason once."""

from __future__ import annotations

import io
import logging

import pytest
from prometheus_client import CollectorRegistry

from streamer.source import Reject, new_metrics, parse_csv, record_pass
from tests.streamer.dcgm_fixture import csv_text, row


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels or None)


def test_two_passes_count_twice_and_log_each_reason_once_per_pass(
    caplog: pytest.LogCaptureFixture,
) -> None:
    text = csv_text([row(), row(value="nan"), row(value="inf"), row(gpu_id=""), row(timestamp="?")])
    report = parse_csv(io.StringIO(text, newline="")).report
    registry = CollectorRegistry()
    metrics = new_metrics(registry)
    caplog.set_level(logging.WARNING, logger="streamer.source")
    for pass_number in (1, 2):
        record_pass(report, metrics, pass_number)
    rejected = "gpu_telemetry_streamer_rows_rejected_total"
    assert sample(registry, "gpu_telemetry_streamer_rows_read_total") == 10
    assert sample(registry, rejected, reason="value_not_finite") == 4
    assert sample(registry, rejected, reason="missing_gpu_id") == 2
    assert sample(registry, rejected, reason="no_identity") == 0  # exported before it happens
    assert sample(registry, rejected, reason="bad_timestamp") == 2
    finite = [r for r in caplog.records if getattr(r, "reason", "") == Reject.VALUE_NOT_FINITE]
    assert [(r.pass_number, r.line, r.count) for r in finite] == [(1, 3, 2), (2, 3, 2)]
    assert len(caplog.records) == 6  # three reasons x two passes
    assert "line 3" in finite[0].getMessage()


def test_metrics_on_separate_registries_do_not_collide() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    new_metrics(a).rows_read.inc()
    new_metrics(b)
    assert sample(a, "gpu_telemetry_streamer_rows_read_total") == 1
    assert sample(b, "gpu_telemetry_streamer_rows_read_total") == 0


def test_record_pass_without_metrics_only_logs(caplog: pytest.LogCaptureFixture) -> None:
    report = parse_csv(io.StringIO(csv_text([row(value="x")]), newline="")).report
    caplog.set_level(logging.WARNING, logger="streamer.source")
    record_pass(report, None, 1)
    assert [r.reason for r in caplog.records] == ["value_not_numeric"]  # type: ignore[attr-defined]

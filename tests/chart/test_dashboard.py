"""The Grafana dashboard: the reference's panels plus lag panels, valid PromQL, known metrics only.

KNOWN_METRICS is the contract with the components (SPEC section 7). A misspelt name would leave a
panel empty without any error, which is what happened to the reference; the lead also evaluates
every expression against a real Prometheus that scraped the running components.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.chart.conftest import CHART, Chart, run

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
KNOWN_METRICS = {
    "gpu_telemetry_streamer_items_published_total": "counter",
    "gpu_telemetry_streamer_backpressure_total": "counter",
    "gpu_telemetry_streamer_batch_pending": "gauge",
    "gpu_telemetry_broker_messages_enqueued_total": "counter",
    "gpu_telemetry_broker_messages_delivered_total": "counter",
    "gpu_telemetry_broker_queue_depth": "gauge",
    "gpu_telemetry_broker_subscribers": "gauge",
    "gpu_telemetry_broker_consumer_lag_points": "gauge",
    "gpu_telemetry_broker_consumer_lag_seconds": "gauge",
    "gpu_telemetry_broker_log_end_offset": "gauge",
    "gpu_telemetry_broker_committed_offset": "gauge",
    "gpu_telemetry_broker_log_bytes": "gauge",
    "gpu_telemetry_broker_disk_budget_bytes": "gauge",
    "gpu_telemetry_broker_fsync_seconds": "histogram",
    "gpu_telemetry_broker_retention_deleted_points_total": "counter",
    "gpu_telemetry_collector_messages_received_total": "counter",
    "gpu_telemetry_collector_messages_flushed_total": "counter",
    "gpu_telemetry_collector_backlog": "gauge",
    "gpu_telemetry_collector_flush_latency_seconds": "histogram",
    "gpu_telemetry_collector_write_errors_total": "counter",
    "gpu_telemetry_collector_dead_lettered_total": "counter",
    "gpu_telemetry_streamer_rows_rejected_total": "counter",
    "gpu_telemetry_broker_publish_throttle_seconds_total": "counter",
}
PROMETHEUS_BUILTINS = {"up"}
# Metrics only the alerts use (not on the dashboard); test_alert_only_metrics_exist checks them
# against the components' metric definitions.
ALERT_ONLY_METRICS = {
    "gpu_telemetry_broker_disk_free_bytes": "gauge",
    "gpu_telemetry_broker_auth_failures_total": "counter",
    "gpu_telemetry_gateway_requests_total": "counter",
    "gpu_telemetry_scrape_up": "gauge",
}
# The reference README's panels, by title, and the lag panels this product adds.
REQUIRED_PANELS = [
    "Streamer Throughput",
    "Streamer Backpressure",
    "Streamer Batch Pending",
    "Broker Enqueued vs Delivered",
    "Broker Queue Depth",
    "Broker Subscribers",
    "Collector Received vs Flushed",
    "Collector Backlog",
    "Collector Flush Latency p95",
    "Consumer Lag per Partition (points)",
    "Consumer Lag per Partition (seconds)",
    "Log End Offset vs Committed Offset",
    "Broker Log Size",
    "Broker fsync Latency",
    "Collector Write Errors",
    "Rejected CSV Rows by Reason",
]
# Grafana variables, replaced the way Grafana would before PromQL parsing.
VARIABLES = {"$namespace": ".*", "${namespace}": ".*", "$__rate_interval": "1m"}
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


def panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out += p.get("panels", [])
    return out


def expressions(dash: dict) -> list[tuple[str, str]]:
    """(where, expr) of every panel target and every query variable."""
    out = [
        (f"{p['title']}/{t['refId']}", t["expr"])
        for p in panels(dash)
        for t in p.get("targets", [])
    ]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            inner = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query)
            assert inner, f"variable {var['name']}: unsupported query {query}"
            out.append((f"variable {var['name']}", inner.group(1)))
    return out


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (strings, label matchers and label lists removed)."""
    expr = QUOTED.sub('""', expr)
    expr = re.sub(r"\{[^}]*\}", "{}", expr)
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    functions = {
        "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "deriv", "delta",
        "histogram_quantile", "absent", "label_values", "and", "or", "unless", "topk", "bottomk",
    }  # fmt: skip
    names = {m for m in re.findall(r"[a-zA-Z_:][\w:]*", expr) if not m.isdigit()}
    return names - functions


def base_name(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        stem = name.removesuffix(suffix)
        if stem != name and KNOWN_METRICS.get(stem) == "histogram":
            return stem
    return name


@pytest.fixture(scope="module", params=DASHBOARDS, ids=lambda p: p.name)
def dashboard(request: pytest.FixtureRequest) -> dict:
    return json.loads(Path(request.param).read_text())


def test_required_panels_are_present(dashboard: dict) -> None:
    titles = [p["title"] for p in panels(dashboard)]
    for required in REQUIRED_PANELS:
        assert any(t.startswith(required) for t in titles), f"missing panel {required!r}"


def test_every_target_has_its_own_refid_and_the_datasource_variable(dashboard: dict) -> None:
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for p in panels(dashboard):
        if p["type"] == "row":
            continue
        refs = [t["refId"] for t in p["targets"]]
        assert refs and all(refs) and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]


def test_every_expression_uses_known_metrics_only(dashboard: dict) -> None:
    used: set[str] = set()
    for where, expr in expressions(dashboard):
        names = {base_name(n) for n in metric_names(expr)}
        unknown = names - set(KNOWN_METRICS) - PROMETHEUS_BUILTINS
        assert not unknown, f"{where}: unknown metric {sorted(unknown)} in {expr}"
        assert names, f"{where}: no metric in {expr}"
        used |= names
    assert set(KNOWN_METRICS) <= used, f"not on the dashboard: {set(KNOWN_METRICS) - used}"


def test_alert_expressions_use_known_metrics_only(chart: Chart) -> None:
    (rule,) = chart.render("default").of_kind("PrometheusRule")
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            names = {base_name(n) for n in metric_names(r["expr"])}
            known = set(KNOWN_METRICS) | set(ALERT_ONLY_METRICS) | PROMETHEUS_BUILTINS
            unknown = names - known
            assert not unknown, f"{r['alert']}: unknown metric {sorted(unknown)}"


def test_alert_only_metrics_exist() -> None:
    from prometheus_client import CollectorRegistry

    from gateway.metrics import RequestMetrics
    from streamer.metrics import ScrapeMetrics
    from walbroker.auth import Access
    from walbroker.metrics import BrokerMetrics

    registries = [BrokerMetrics().registry, RequestMetrics().registry, CollectorRegistry()]
    ScrapeMetrics(registries[2])
    Access(None, False, registries[2])
    families = {
        f.name + ("_total" if f.type == "counter" else ""): f.type
        for registry in registries
        for f in registry.collect()
    }
    for name, kind in ALERT_ONLY_METRICS.items():
        assert families.get(name) == kind, name


def test_metric_name_extraction_catches_a_misspelling() -> None:
    expr = 'sum by (pod) (rate(gpu_telemetery_streamer_items_published_total{namespace=~"a"}[1m]))'
    assert metric_names(expr) == {"gpu_telemetery_streamer_items_published_total"}
    q = "histogram_quantile(0.9, sum by (le) (rate(gpu_telemetry_broker_fsync_seconds_bucket[5m])))"
    assert {base_name(n) for n in metric_names(q)} == {"gpu_telemetry_broker_fsync_seconds"}


def test_every_expression_is_valid_promql(dashboard: dict, promtool: str, tmp_path: Path) -> None:
    rules = []
    for i, (_, expr) in enumerate(expressions(dashboard)):
        for var, value in VARIABLES.items():
            expr = expr.replace(var, value)
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    path = tmp_path / "dashboard-exprs.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run([promtool, "check", "rules", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr

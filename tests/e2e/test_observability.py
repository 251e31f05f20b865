"""Every dashboard and alert expression of the RENDERED chart returns data from a real Prometheus.

A short real pipeline (broker, streamer, collector on SQLite, gateway) runs while Prometheus
(Debian's `prometheus`, installed by scripts/install-tools.sh) scrapes every component each second,
with the labels the prometheus-operator gives targets of the chart's ServiceMonitors: `job` = the
Service name, `namespace`, `pod`, `service`, `endpoint`. A misspelt metric or label returns nothing,
which fails the test and names the panel or alert.

- Dashboard targets (and the query variable) are evaluated as Grafana would, with its variables
  substituted (`$namespace` = the release namespace); each must give at least one finite sample.
- Alert expressions return data only when they fire, so each metric selector inside them (and
  inside the dashboard targets) must select series; the whole expression must still evaluate.
- Every `gpu_telemetry_*` family the components expose is on the dashboard or listed in
  NOT_ON_DASHBOARD with the reason.

The broker runs with a small disk budget (policy `block`) so retention deletes consumed records
during the run and the retention counter exists; one malformed CSV row makes a rejection.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts import gen_dcgm
from tests.chart.conftest import NAMESPACE, Rendered, dependency_free_chart, find_tool
from tests.chart.test_dashboard import KNOWN_METRICS, expressions
from tests.e2e.pipeline import Pipeline, Proc, http_get
from tests.fixtures.broker import BrokerProcess, free_port
from tests.support import wait_until

INSTALL_HINT = (
    "prometheus not found: run scripts/install-tools.sh (it installs Debian's prometheus)"
)
SCRAPE_INTERVAL = "1s"
DEADLINE_S = 25.0  # from the first scrape until every expression must have data
# Grafana's variables as a dashboard user would have them; `$namespace` is the release namespace.
GRAFANA_VARIABLES = {
    "${namespace}": NAMESPACE,
    "$namespace": NAMESPACE,
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
}
# Selectors of our own metrics and of Prometheus' `up`, with their label matchers if any.
SELECTOR = re.compile(r"(?<![\w:])((?:gpu_telemetry_[\w:]*)|up)\s*(\{[^}]*\})?")
# Families a component exposes that the dashboard deliberately leaves out, and why.
NOT_ON_DASHBOARD = {
    "gpu_telemetry_broker_publish_throttled_total": "throttle waits; the panel shows their seconds",
    "gpu_telemetry_streamer_rows_read_total": "rows per pass; throughput is points published",
    "gpu_telemetry_streamer_row_warnings_total": "rows kept despite a defect; logged per pass",
    "gpu_telemetry_streamer_publish_latency_seconds": "seal-to-ack; see backpressure",
    "gpu_telemetry_streamer_partitions_owned": "producer-group assignment detail",
    "gpu_telemetry_streamer_partition_passes_total": "progress detail",
    "gpu_telemetry_broker_log_start_offset": "retention detail; deletions panel shows the rate",
    "gpu_telemetry_broker_group_commit_records": "batching detail for benchmarks",
    "gpu_telemetry_broker_offset_commits_total": "commit detail; committed offset is shown",
    "gpu_telemetry_broker_rebalances_total": "group churn; lag panels show the effect",
    "gpu_telemetry_broker_admin_actions_total": "audit trail of admin operations",
    "gpu_telemetry_broker_producer_duplicates_total": "retried batches, not a rate to watch",
    "gpu_telemetry_broker_publish_rejected_total": "backpressure panel shows the producer side",
    # The usage gauges of the broker's bounds (docs/limits.md): read them when a limit is hit.
    "gpu_telemetry_broker_hot_buffer_bytes": "bounded by --hot-buffer-bytes; limits.md",
    "gpu_telemetry_broker_queue_bytes": "bounded by --max-queue-bytes; queue depth is shown",
    "gpu_telemetry_broker_disk_free_bytes": "watermark --min-free-bytes; log size is shown",
    "gpu_telemetry_broker_open_streams": "bounded by --max-streams; limits.md",
    "gpu_telemetry_broker_topics": "bounded by --max-topics; limits.md",
    "gpu_telemetry_broker_retention_ignored_groups": "idle groups; also in admin groups",
    "gpu_telemetry_broker_refused_calls_total": "streams refused at a limit; limits.md",
    "gpu_telemetry_broker_invalid_requests_total": "malformed frames; limits.md",
    "gpu_telemetry_broker_groups_expired_total": "group retention; limits.md",
    "gpu_telemetry_broker_groups": "bounded by --max-groups; also in admin groups",
    "gpu_telemetry_broker_consume_queue_bytes": "bounded by --max-consume-queue-bytes; limits.md",
    "gpu_telemetry_broker_unacked_pauses_total": "members at --max-unacked-points; lag is shown",
    "gpu_telemetry_collector_store_up": "write errors panel and alert cover a failing store",
    "gpu_telemetry_collector_commits_total": "flushed points are only counted when committed",
    "gpu_telemetry_gateway_requests_total": "API traffic, not pipeline health",
    "gpu_telemetry_gateway_request_duration_seconds": "API latency, not pipeline health",
    "gpu_telemetry_gateway_connections": "bounded by --max-connections; limits.md",
    "gpu_telemetry_gateway_slow_clients_total": "closed at --head-timeout-s; limits.md",
    "gpu_telemetry_gateway_slow_readers_total": "closed at --send-timeout-s; limits.md",
    "gpu_telemetry_gateway_active_connections": "bounded by --max-active; limits.md",
    "gpu_telemetry_gateway_accept_pauses_total": "a worker at --max-active; limits.md",
    "gpu_telemetry_broker_open_connections": "bounded by --max-connections; limits.md",
    "gpu_telemetry_broker_connection_limit_seconds_total": "time at --max-connections; limits.md",
    "gpu_telemetry_broker_publish_paused_seconds_total": "refused streams left unread; limits.md",
    "gpu_telemetry_broker_queue_clients": "clients served in turn by the writer; limits.md",
    "gpu_telemetry_broker_metrics_http_connections": "bounded by --metrics-max-connections",
    "gpu_telemetry_collector_metrics_http_connections": "bounded by --metrics-max-connections",
    "gpu_telemetry_streamer_metrics_http_connections": "bounded by --metrics-max-connections",
}


def find_prometheus() -> str:
    found = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(found).is_file():
        pytest.fail(INSTALL_HINT, pytrace=False)
    return found


@dataclass
class Target:
    """One scraped component: its Prometheus job (the chart's Service name) and metrics address."""

    component: str
    job: str
    endpoint: str
    address: str


class Prometheus:
    """A real Prometheus server on a free loopback port, scraping fixed targets every second."""

    def __init__(self, binary: str, workdir: Path, targets: list[Target]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(targets), sort_keys=False))
        self.argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self.argv, stdout=logf, stderr=subprocess.STDOUT)
        ready = wait_until(lambda: http_get(f"{self.url}/-/ready", 1)[0] == 200, 20)
        assert ready, f"prometheus not ready:\n{self.log_path.read_text()[-2000:]}"
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        status, body = http_get(f"{self.url}/api/v1/{path}?{query}", 10)
        assert status == 200, f"{path} {params}: HTTP {status} {body[:300]!r}"
        return json.loads(body)["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert isinstance(data, dict) and data["resultType"] == "vector", (expr, data)
        return list(data["result"])


def scrape_config(targets: list[Target]) -> dict[str, Any]:
    """One job per component, labelled like a prometheus-operator ServiceMonitor target."""
    jobs = [
        {
            "job_name": t.job,
            "static_configs": [
                {
                    "targets": [t.address],
                    "labels": {
                        "namespace": NAMESPACE,
                        "service": t.job,
                        "pod": f"{t.job}-0",
                        "container": t.component,
                        "endpoint": t.endpoint,
                    },
                }
            ],
        }
        for t in targets
    ]
    interval = {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL}
    return {"global": {**interval, "evaluation_interval": SCRAPE_INTERVAL}, "scrape_configs": jobs}


def monitored_services(rendered: Rendered) -> dict[str, tuple[str, str]]:
    """component -> (job, endpoint port name), from the rendered ServiceMonitors and Services."""
    out = {}
    for sm in rendered.of_kind("ServiceMonitor"):
        wanted = sm["spec"]["selector"]["matchLabels"]
        port = sm["spec"]["endpoints"][0]["port"]
        (svc,) = [
            s
            for s in rendered.of_kind("Service")
            if wanted.items() <= s["metadata"]["labels"].items()
            and port in {p["name"] for p in s["spec"]["ports"]}
        ]
        component = svc["metadata"]["labels"]["app.kubernetes.io/component"]
        out[component] = (svc["metadata"]["name"], port)
    return out


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    chart = dependency_free_chart(tmp_path_factory.mktemp("chart") / "gputel", find_tool("helm"))
    return chart.render("default")


@pytest.fixture(scope="module")
def prometheus(
    rendered: Rendered, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """The pipeline running and scraped; everything is stopped afterwards."""
    binary = find_prometheus()
    tmp = tmp_path_factory.mktemp("observability")
    csv = tmp / "dcgm.csv"
    with open(csv, "w", newline="") as f:
        gen_dcgm.write(f, seed=5, hosts=2, gpus_per_host=8, passes=1)
        f.write('"2025-07-18T20:42:30Z","DCGM_FI_DEV_GPU_UTIL","0","nvidia0"\n')  # field_count
    # ~10 kB of log per second: the budget fills within seconds and retention deletes.
    broker = BrokerProcess(
        tmp / "broker",
        "--topic",
        "telemetry:4",
        "--topic",
        "telemetry.dlq:2",
        "--retention-bytes",
        "60000",
    )
    p = Pipeline(tmp, broker, ["--store", f"sqlite:{tmp / 'store.db'}"], csv)
    procs: dict[str, Proc | BrokerProcess] = {
        "broker": broker,
        "collector": p.collector(),
        "streamer": p.streamer("--forever", "--pass-interval", "1"),
        "gateway": (gateway := p.gateway_proc()),
    }
    targets = [
        Target(component, job, endpoint, urllib.parse.urlsplit(procs[component].metrics_url).netloc)
        for component, (job, endpoint) in monitored_services(rendered).items()
    ]
    assert {t.component for t in targets} == set(procs)
    # Prometheus first: its target discovery takes ~5 s, while the components start.
    prom = Prometheus(binary, tmp, targets)
    try:
        prom.start()
        broker.start()
        for proc in procs.values():
            if isinstance(proc, Proc):
                proc.start()
        api = f"{gateway.health_url.rsplit('/', 1)[0]}/api/v1/gpus"
        assert http_get(api, 10)[0] == 200  # one API request for the gateway's metrics
        yield prom
    finally:
        prom.stop()
        p.stop_all()
        broker.stop(10)


def substitute(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr}"
    return expr


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one sample that is a number (histogram_quantile of no observations is NaN)."""
    return any(math.isfinite(float(r["value"][1])) for r in result)


def eventually_all(
    prom: Prometheus, checks: dict[str, str], ok: Callable[[list[dict[str, Any]]], bool]
) -> dict[str, str]:
    """Evaluate every query until all pass `ok` or the deadline; returns the failing ones."""
    deadline = time.monotonic() + DEADLINE_S
    pending = dict(checks)
    while True:
        pending = {where: q for where, q in pending.items() if not ok(prom.query(q))}
        if not pending or time.monotonic() > deadline:
            return pending
        time.sleep(1.0)


def dashboards(rendered: Rendered) -> dict[str, dict[str, Any]]:
    """Dashboard JSON by ConfigMap key, from the rendered ConfigMaps."""
    out = {}
    for cm in rendered.of_kind("ConfigMap"):
        for key, text in cm.get("data", {}).items():
            if key.endswith(".json"):
                out[key] = json.loads(text)
    assert out, "no dashboard ConfigMap rendered"
    return out


def alert_rules(rendered: Rendered) -> list[dict[str, Any]]:
    (rule,) = rendered.of_kind("PrometheusRule")
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


def selectors(expr: str) -> list[str]:
    return [name + (matchers or "") for name, matchers in SELECTOR.findall(expr)]


def test_every_component_is_scraped_under_its_chart_job(prometheus: Prometheus, rendered) -> None:
    jobs = {job for job, _ in monitored_services(rendered).values()}
    checks = {job: f'up{{namespace="{NAMESPACE}", job="{job}"}} == 1' for job in jobs}
    failing = eventually_all(prometheus, checks, bool)
    assert not failing, f"targets down: {sorted(failing)}"


def test_every_dashboard_expression_returns_data(prometheus: Prometheus, rendered) -> None:
    checks = {}
    for name, dash in dashboards(rendered).items():
        for where, expr in expressions(dash):
            if where.startswith("variable "):
                continue  # a label_values() query, checked below
            checks[f"{name}: {where}"] = substitute(expr)
    failing = eventually_all(prometheus, checks, has_data)
    assert not failing, "panels without data:\n" + "\n".join(
        f"  {where}: {q}" for where, q in failing.items()
    )


def test_dashboard_variables_list_the_release_namespace(prometheus: Prometheus, rendered) -> None:
    for name, dash in dashboards(rendered).items():
        for where, metric in expressions(dash):
            if where.startswith("variable "):
                values = prometheus.api("label/namespace/values", **{"match[]": metric})
                assert NAMESPACE in values, f"{name}: {where}: label_values({metric}) = {values}"


# Alerts whose series only exist in deployments this pipeline is not: a broker that refused a
# token, a gateway that answered 401/403 (this pipeline runs without tokens), the streamer in
# scrape mode (this one reads a CSV). Their expressions still evaluate here, and
# tests/chart/test_dashboard.py checks their metric names against the components' code.
NO_SERIES_HERE = {
    "GputelBrokerAuthFailures": "no token refused: the pipeline runs without tokens",
    "GputelGatewayAuthFailures": "no 401/403 answered: the pipeline runs without tokens",
    "GputelScrapeTargetDown": "no scrape target: the streamer reads a CSV",
}


def test_every_metric_selector_of_the_alerts_and_panels_selects_series(
    prometheus: Prometheus, rendered
) -> None:
    checks = {}
    rules = alert_rules(rendered)
    assert set(NO_SERIES_HERE) <= {rule["alert"] for rule in rules}  # the list cannot go stale
    for rule in rules:
        prometheus.query(rule["expr"])  # the whole expression evaluates (empty unless firing)
        if rule["alert"] in NO_SERIES_HERE:
            continue
        for sel in selectors(rule["expr"]):
            checks[f"alert {rule['alert']}: {sel}"] = sel
    for name, dash in dashboards(rendered).items():
        for where, expr in expressions(dash):
            for sel in selectors(substitute(expr)):
                checks[f"{name}: {where}: {sel}"] = sel
    assert len(checks) > 20, checks
    failing = eventually_all(prometheus, checks, bool)
    assert not failing, "selectors without series:\n" + "\n".join(sorted(failing))


def test_a_misspelt_metric_or_label_would_fail(prometheus: Prometheus) -> None:
    good = f'gpu_telemetry_streamer_items_published_total{{namespace="{NAMESPACE}"}}'
    assert eventually_all(prometheus, {"good": good}, bool) == {}
    assert prometheus.query(good.replace("telemetry", "telemetery")) == []
    assert prometheus.query(good.replace("namespace=", "namespaces=")) == []


def test_the_malformed_row_shows_on_the_rejected_rows_panel(prometheus: Prometheus) -> None:
    rejected = "gpu_telemetry_streamer_rows_rejected_total"
    checks = {"field_count": f'{rejected}{{namespace="{NAMESPACE}", reason="field_count"}} > 0'}
    assert eventually_all(prometheus, checks, bool) == {}
    reasons = {r["metric"]["reason"] for r in prometheus.query(rejected)}
    assert {"field_count", "value_not_numeric", "missing_metric"} <= reasons  # pre-set at 0


def test_every_exposed_family_is_on_the_dashboard_or_left_out_on_purpose(
    prometheus: Prometheus,
) -> None:
    names = prometheus.api("label/__name__/values", **{"match[]": '{__name__=~"gpu_telemetry_.*"}'})
    assert isinstance(names, list)
    families = families_of(set(names))
    missing = set(KNOWN_METRICS) - families
    assert not missing, f"the dashboard uses metrics no component exposes: {sorted(missing)}"
    undecided = families - set(KNOWN_METRICS) - set(NOT_ON_DASHBOARD)
    assert not undecided, f"exposed but neither on the dashboard nor left out: {sorted(undecided)}"


def families_of(names: set[str]) -> set[str]:
    """Families of sample names: histogram series folded, `_created` series dropped."""
    histograms = {n.removesuffix("_bucket") for n in names if n.endswith("_bucket")}
    out = set()
    for name in names:
        if name.endswith("_created"):
            continue
        stem = re.sub(r"_(bucket|sum|count)$", "", name)
        out.add(stem if stem in histograms else name)
    return out

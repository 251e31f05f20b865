"""The alert rules taken from the RENDERED PrometheusRule pass promtool's check and unit tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.chart.conftest import Chart, run

HERE = Path(__file__).resolve().parent
EXPECTED_ALERTS = {
    "GputelConsumerLagGrowing",
    "GputelConsumerLagHigh",
    "GputelBrokerDiskNearlyFull",
    "GputelCollectorWriteErrors",
    "GputelComponentDown",
    "GputelComponentAbsent",
    "GputelBrokerDiskFreeLow",
    "GputelBrokerAuthFailures",
    "GputelGatewayAuthFailures",
    "GputelDeadLettered",
    "GputelScrapeTargetDown",
}


def rendered_rules(chart: Chart, variant: str = "default") -> dict:
    (rule,) = chart.render(variant).of_kind("PrometheusRule")
    return {"groups": rule["spec"]["groups"]}


def write_rules(chart: Chart, directory: Path) -> Path:
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(rendered_rules(chart), sort_keys=False))
    return path


def test_rendered_rules_pass_promtool_check(chart: Chart, promtool: str, tmp_path: Path) -> None:
    proc = run([promtool, "check", "rules", str(write_rules(chart, tmp_path))])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_unit_test(chart: Chart) -> None:
    alerts = {r["alert"] for g in rendered_rules(chart)["groups"] for r in g["rules"]}
    assert alerts == EXPECTED_ALERTS
    spec = yaml.safe_load((HERE / "alerts_test.yaml").read_text())
    tested = {t["alertname"] for case in spec["tests"] for t in case["alert_rule_test"]}
    assert tested == EXPECTED_ALERTS


def test_rendered_rules_pass_promtool_unit_tests(
    chart: Chart, promtool: str, tmp_path: Path
) -> None:
    write_rules(chart, tmp_path)
    shutil.copy(HERE / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    proc = run([promtool, "test", "rules", "alerts_test.yaml"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_thresholds_come_from_values(chart: Chart) -> None:
    proc = chart.template(
        ["external-secret.yaml"],
        [],
        [
            *("--set", "metrics.prometheusRule.lagHigh.seconds=42"),
            *("--set-json", "metrics.prometheusRule.brokerDisk.ratio=0.5"),
        ],
    )
    assert proc.returncode == 0, proc.stderr
    assert "gpu_telemetry_broker_consumer_lag_seconds" in proc.stdout
    assert "> 42\n" in proc.stdout and "> 0.5\n" in proc.stdout


def alerts_of(chart: Chart, values: list[str], extra: list[str]) -> dict[str, dict]:
    proc = chart.template(values, [], extra)
    assert proc.returncode == 0, proc.stderr
    (rule,) = [o for o in yaml.safe_load_all(proc.stdout) if o and o["kind"] == "PrometheusRule"]
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}


def test_new_thresholds_come_from_values(chart: Chart) -> None:
    rules = alerts_of(
        chart,
        ["external-secret.yaml"],
        [
            *("--set", "metrics.prometheusRule.brokerDiskFree.bytes=2147483648"),
            *("--set", "metrics.prometheusRule.authFailures.threshold=3"),
        ],
    )
    assert rules["GputelBrokerDiskFreeLow"]["expr"].endswith("< 2147483648")
    assert "gpu_telemetry_broker_disk_free_bytes{" in rules["GputelBrokerDiskFreeLow"]["expr"]
    for name in ("GputelBrokerAuthFailures", "GputelGatewayAuthFailures"):
        assert rules[name]["expr"].endswith("> 3"), name


def test_down_and_absent_alerts_only_with_the_service_monitors(chart: Chart) -> None:
    # Their job labels are the ServiceMonitors': without them both would fire for every component.
    off = ["--set", "metrics.serviceMonitor.enabled=false"]
    rules = alerts_of(chart, ["external-secret.yaml"], off)
    assert set(rules) == EXPECTED_ALERTS - {"GputelComponentDown", "GputelComponentAbsent"}
    assert set(alerts_of(chart, ["external-secret.yaml"], [])) == EXPECTED_ALERTS


def test_kafka_transport_has_no_walbroker_alerts(chart: Chart) -> None:
    rules = alerts_of(chart, ["external-secret.yaml", "kafka.yaml"], [])
    walbroker_only = {
        "GputelConsumerLagHigh", "GputelBrokerDiskNearlyFull", "GputelBrokerDiskFreeLow",
        "GputelBrokerAuthFailures",
    }  # fmt: skip
    assert set(rules) == EXPECTED_ALERTS - walbroker_only

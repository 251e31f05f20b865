"""The chart with transport=kafka: no walbroker, Kafka clients wired to Secrets, none in values.

The generic checks (helm lint --strict, strict schema validation, hardened pods, probes, Services
selecting pods) run on the "kafka" and "kafka-mtls" variants too (tests/chart/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gputel.transport.kafka_config import is_secret, parse
from tests.chart.conftest import VALUES_DIR, Chart, Rendered, run
from tests.chart.test_alerts import rendered_rules

KAFKA_DIR = "/var/run/gputel/kafka"
CLIENTS = ("streamer", "collector", "admin")


def container(r: Rendered, kind: str, component: str) -> dict:
    obj = r.get(kind, f"gputel-{component}")
    return obj["spec"]["template"]["spec"]["containers"][0]


def volumes(r: Rendered, kind: str, component: str) -> dict[str, dict]:
    pod = r.get(kind, f"gputel-{component}")["spec"]["template"]["spec"]
    return {v["name"]: v for v in pod["volumes"]}


def kinds_of(r: Rendered, component: str) -> list[str]:
    return [
        f"{o['kind']}/{o['metadata']['name']}"
        for o in r.objects
        if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
    ]


@pytest.mark.parametrize("variant", ["kafka", "kafka-mtls"])
def test_no_walbroker_objects_with_kafka(chart: Chart, variant: str) -> None:
    r = chart.render(variant)
    assert kinds_of(r, "broker") == []  # no StatefulSet, Service, PDB, monitor or policy
    assert not r.of_kind("StatefulSet") and not r.of_kind("PersistentVolumeClaim")
    secrets = {s["metadata"]["name"] for s in r.of_kind("Secret")}
    # Only the REST API's token, the gateway's token file and the gateway's certificate remain.
    assert secrets == {"gputel-api-token", "gputel-gateway-auth", "gputel-tls"}
    for policy in r.of_kind("NetworkPolicy"):
        assert "gputel-broker" not in str(policy["spec"]), policy["metadata"]["name"]
    for where, pod in r.pod_specs():
        assert "gputel-broker" not in str(pod), where
    gateway = container(r, "Deployment", "gateway")
    assert not any(a.startswith("--broker") for a in gateway["args"])


def test_clients_get_the_bootstrap_servers_and_the_properties_file(chart: Chart) -> None:
    r = chart.render("kafka")
    for component in CLIENTS:
        kind = "Job" if component == "admin" else "Deployment"
        c = container(r, kind, component)
        assert "--broker=kafka://telemetry-kafka-bootstrap.kafka.svc:9093" in c["args"]
        assert f"--kafka-config={KAFKA_DIR}/config/client.properties" in c["args"]
        # No walbroker credential: no token, no walbroker CA, no GPUTEL_BROKER_* variable.
        assert not any(e["name"].startswith("GPUTEL_BROKER_") for e in c.get("env", []))
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts.get("kafka-sasl") == f"{KAFKA_DIR}/sasl"
        assert mounts.get("kafka-ca") == f"{KAFKA_DIR}/ca"
        assert "credential" not in mounts and "tls" not in mounts
        vols = volumes(r, kind, component)
        assert vols["kafka-sasl"]["secret"]["secretName"] == "gputel"  # the KafkaUser's Secret
        assert vols["kafka-sasl"]["secret"]["items"] == [{"key": "password", "path": "password"}]
        assert vols["kafka-ca"]["secret"]["secretName"] == "telemetry-cluster-ca-cert"
        assert vols["kafka-config"]["configMap"]["name"] == "gputel-kafka-client"
    assert container(r, "Job", "admin")["args"][0] == "gputel-admin"


def test_rendered_properties_reference_the_mounted_files_and_hold_no_secret(chart: Chart) -> None:
    r = chart.render("kafka")
    text = r.get("ConfigMap", "gputel-kafka-client")["data"]["client.properties"]
    props = {k: v for k, (v, _) in parse(text).items()}
    assert props == {
        "client.id": "gputel",
        "compression.type": "lz4",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "gputel",
        "sasl.password": f"${{file:{KAFKA_DIR}/sasl/password}}",
        "ssl.ca.location": f"{KAFKA_DIR}/ca/ca.crt",
    }
    assert all(v.startswith("${file:") for k, v in props.items() if is_secret(k))


def test_mutual_tls_and_a_properties_file_from_a_secret(chart: Chart) -> None:
    r = chart.render("kafka-mtls")
    assert not [c for c in r.of_kind("ConfigMap") if "kafka" in c["metadata"]["name"]]
    for component in ("streamer", "collector"):
        vols = volumes(r, "Deployment", component)
        assert vols["kafka-config"]["secret"] == {
            "secretName": "gputel-kafka-client",
            "defaultMode": 0o400,
            "items": [{"key": "client.properties", "path": "client.properties"}],
        }
        client = vols["kafka-client"]["secret"]
        assert client["secretName"] == "gputel-tls-user" and client["defaultMode"] == 0o400
        assert {i["path"] for i in client["items"]} == {"tls.crt", "tls.key"}
        assert "kafka-sasl" not in vols
        c = container(r, "Deployment", component)
        assert c["args"][1] == (
            "--broker=kafka://kafka-0.kafka.svc:9093,kafka-1.kafka.svc:9093,kafka-2.kafka.svc:9093"
        )


def test_network_policies_open_kafka_and_nothing_of_walbroker(chart: Chart) -> None:
    r = chart.render("kafka-mtls")
    policies = {p["metadata"]["name"]: p["spec"] for p in r.of_kind("NetworkPolicy")}
    assert "gputel-broker" not in policies
    kafka_rule = {
        "ports": [{"port": 9093, "protocol": "TCP"}],
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kafka"}}}],
    }
    for component in ("streamer", "collector"):
        assert kafka_rule in policies[f"gputel-{component}"]["egress"]
    assert kafka_rule not in policies["gputel-gateway"]["egress"]


def test_alerts_on_kafka_use_the_collectors_lag_and_pass_promtool(
    chart: Chart, promtool: str, tmp_path: Path
) -> None:
    rules = rendered_rules(chart, "kafka")
    by_name = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert "GputelBrokerDiskNearlyFull" not in by_name and "GputelConsumerLagHigh" not in by_name
    lag = by_name["GputelConsumerLagGrowing"]["expr"]
    assert "gpu_telemetry_collector_consumer_lag_records" in lag and "broker" not in lag
    assert "gputel-broker" not in by_name["GputelComponentDown"]["expr"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    proc = run([promtool, "check", "rules", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["transport=kafka"], "kafka.bootstrapServers is required with transport=kafka"),
        (
            ["transport=kafka", "kafka.bootstrapServers=k:9092", "streamer.replicas=2"],
            "streamer.replicas must be 1 with transport=kafka",
        ),
        (
            [
                "transport=kafka",
                "kafka.bootstrapServers=k:9092",
                "kafka.sasl.mechanism=PLAIN",
                "kafka.sasl.passwordSecret.name=user",
            ],
            "kafka.sasl.username is required with kafka.sasl.mechanism",
        ),
        (
            [
                "transport=kafka",
                "kafka.bootstrapServers=k:9092",
                "kafka.sasl.mechanism=PLAIN",
                "kafka.sasl.username=gputel",
            ],
            "kafka.sasl.passwordSecret.name is required with kafka.sasl.mechanism",
        ),
    ],
)
def test_incomplete_kafka_settings_fail_with_a_clear_message(
    chart: Chart, sets: list[str], message: str
) -> None:
    proc = chart.template(["external-secret.yaml"], extra=[x for s in sets for x in ("--set", s)])
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("sets", "path"),
    [
        (["transport=kafka-cluster"], "transport"),
        (["kafka.bootstrapServers=kafka.svc"], "bootstrapServers"),
        (["kafka.properties.sasl\\.password=hunter2"], "sasl.password"),
        (["kafka.properties.ssl\\.key\\.pem=xyz"], "ssl.key.pem"),
        (["kafka.properties.group\\.id=x"], "group.id"),
        (["kafka.sasl.mechanism=GSSAPI"], "mechanism"),
    ],
)
def test_values_schema_refuses_secrets_and_bad_kafka_values(
    chart: Chart, sets: list[str], path: str
) -> None:
    proc = chart.template(["external-secret.yaml"], extra=[x for s in sets for x in ("--set", s)])
    assert proc.returncode != 0, proc.stdout[:300]
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert path in proc.stderr, proc.stderr


def test_values_files_of_the_kafka_variants_hold_no_secret() -> None:
    for name in ("kafka.yaml", "kafka-mtls.yaml"):
        text = (VALUES_DIR / name).read_text()
        values = yaml.safe_load(text)
        assert "password:" not in text.replace("key: password", "")
        assert not any(is_secret(k) for k in values["kafka"].get("properties", {}))


def test_topics_job_creates_the_walbroker_topics_with_their_partition_counts(chart: Chart) -> None:
    r = chart.render("kafka")
    job = r.get("Job", "gputel-kafka-topics")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    pod = job["spec"]["template"]["spec"]
    base = [
        "gputel-admin",
        "--broker=kafka://telemetry-kafka-bootstrap.kafka.svc:9093",
        f"--kafka-config={KAFKA_DIR}/config/client.properties",
    ]
    assert [c["args"] for c in pod["initContainers"]] == [
        [*base, "create-topic", "telemetry", "--partitions=16"],
        [*base, "create-topic", "telemetry.dlq", "--partitions=4"],
    ]
    assert pod["containers"][0]["args"] == [*base, "topics"]
    assert {v["name"] for v in pod["volumes"]} == {"tmp", "kafka-config", "kafka-sasl", "kafka-ca"}
    jobs = {j["metadata"]["name"] for j in chart.render("kafka-mtls").of_kind("Job")}
    assert "gputel-kafka-topics" not in jobs  # off unless kafka.createTopics


def _pod_annotations(chart: Chart, values: list[str], extra: list[str]) -> dict[str, dict]:
    proc = chart.template(values, [], extra)
    assert proc.returncode == 0, proc.stderr
    return {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"].get("annotations", {})
        for o in yaml.safe_load_all(proc.stdout)
        if o and o["kind"] == "Deployment"
    }


def test_a_change_to_the_kafka_client_configmap_rolls_streamer_and_collector(chart: Chart) -> None:
    # The clients read client.properties once, at start: its checksum is in their pod template.
    values = ["external-secret.yaml", "kafka.yaml"]
    base = _pod_annotations(chart, values, ["--set", "podAnnotations.team=gpu"])
    changed = _pod_annotations(
        chart,
        values,
        ["--set", "podAnnotations.team=gpu", "--set", "kafka.properties.linger\\.ms=50"],
    )
    unrelated = _pod_annotations(
        chart, values, ["--set", "podAnnotations.team=gpu", "--set", "gateway.replicas=3"]
    )
    for c in ("streamer", "collector"):
        name = f"gputel-{c}"
        assert len(base[name]["checksum/kafka-client"]) == 64
        assert base[name]["team"] == "gpu"
        assert changed[name]["checksum/kafka-client"] != base[name]["checksum/kafka-client"]
        assert unrelated[name] == base[name]
    assert "checksum/kafka-client" not in base["gputel-gateway"]
    # With kafka.configSecret there is no chart ConfigMap to follow.
    mtls = _pod_annotations(chart, ["external-secret.yaml", "kafka-mtls.yaml"], [])
    assert all("checksum/kafka-client" not in a for a in mtls.values())

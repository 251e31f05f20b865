"""The chart with transport=kafka on a real API server, next to the Secrets Strimzi would make.

No Kafka runs here (kwok runs no process): what is proven is that the release installs, upgrades
and uninstalls cleanly with no broker at all, and that every Secret and key its pods mount exists
(tests/kube/release.py checks the mounts) — the KafkaUser's and the cluster CA's, as Strimzi names
them. Kafka itself is tested with real brokers in tests/kafka.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.kube.conftest import RELEASE, Kube, new_namespace
from tests.kube.release import args_of, assert_healthy, chart_secrets, helm_step, remaining

pytestmark = pytest.mark.timeout(600)

CLUSTER = "telemetry"  # the Strimzi Kafka resource's name
KAFKA = [
    "transport=kafka",
    f"kafka.bootstrapServers={CLUSTER}-kafka-bootstrap.kafka.svc:9093",
    "kafka.sasl.mechanism=SCRAM-SHA-512",
    "kafka.sasl.username=gputel",
    "kafka.sasl.passwordSecret.name=gputel",
    "kafka.tls.enabled=true",
    f"kafka.tls.caSecret.name={CLUSTER}-cluster-ca-cert",
    "admin.job.enabled=true",
    "kafka.createTopics=true",
]


def strimzi_secrets(kube: Kube, ns: str) -> None:
    """The KafkaUser "gputel" (scram-sha-512) Secret and the cluster CA Secret, as Strimzi names
    and fills them (Strimzi copies them into the user's namespace with its User Operator)."""
    password = secrets.token_urlsafe(24)
    jaas = f'org.apache.kafka.common.security.scram.ScramLoginModule required username="gputel" password="{password}";'  # noqa: E501
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "gputel", "namespace": ns},
            "stringData": {"password": password, "sasl.jaas.config": jaas},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{CLUSTER}-cluster-ca-cert", "namespace": ns},
            "stringData": {"ca.crt": "-----BEGIN CERTIFICATE-----\n(test)\n", "ca.password": "x"},
        },
    )


def test_kafka_transport_installs_without_a_broker(kube: Kube, chart_dir: Path) -> None:
    ns = new_namespace(kube, "kafka")
    strimzi_secrets(kube, ns)

    helm_step(kube, "install", ns, chart_dir, KAFKA)
    assert_healthy(kube, ns)  # includes: every mounted Secret, ConfigMap and key exists
    assert kube.get(ns, "statefulsets") == [] and kube.get(ns, "persistentvolumeclaims") == []
    assert len(kube.get(ns, "servicemonitors")) == 3  # streamer, collector, gateway
    assert sorted(chart_secrets(kube, ns)) == [
        f"{RELEASE}-api-token",
        f"{RELEASE}-gateway-auth",
        f"{RELEASE}-tls",
    ]
    args = args_of(kube, ns, "deployment", f"{RELEASE}-collector")
    assert f"--broker=kafka://{CLUSTER}-kafka-bootstrap.kafka.svc:9093" in args
    assert "--kafka-config=/var/run/gputel/kafka/config/client.properties" in args
    jobs = {j["metadata"]["name"]: j for j in kube.get(ns, "jobs")}
    assert jobs[f"{RELEASE}-kafka-topics"]["status"].get("succeeded") == 1
    admin = jobs[f"{RELEASE}-admin"]["spec"]["template"]["spec"]["containers"][0]
    bootstrap = f"{CLUSTER}-kafka-bootstrap.kafka.svc:9093"
    assert admin["args"][:2] == ["gputel-admin", f"--broker=kafka://{bootstrap}"]

    helm_step(kube, "upgrade", ns, chart_dir, [*KAFKA, "collector.replicas=3"])
    assert_healthy(kube, ns)

    kube.helm("uninstall", RELEASE, "-n", ns, "--wait", "--timeout", "2m")
    # The hook Jobs stay for their logs (helm leaves hooks; its TTL removes it after a day).
    hooks = (f"{RELEASE}-admin", f"{RELEASE}-kafka-topics")
    left = [o for o in remaining(kube, ns) if not any(h in o for h in hooks)]
    assert left == [
        "secret/gputel",
        "secret/influx-token",
        f"secret/{CLUSTER}-cluster-ca-cert",
    ]

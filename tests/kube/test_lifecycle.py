"""The chart's whole life on a real API server: install, upgrade, rollback, uninstall.

Installed with the chart's secure defaults (generated tokens and TLS, NetworkPolicies) and an
external InfluxDB. Each step goes through `helm --wait` and then through the checks of
tests/kube/release.py (every workload rolled out and Ready, every PVC Bound, hook Jobs succeeded,
no Warning event). The generated credentials must survive upgrade and rollback: the chart reads
them back with `lookup`, which only a real API server answers (`helm template` sees nothing).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kube.conftest import RELEASE, Kube, new_namespace
from tests.kube.release import (
    args_of,
    assert_healthy,
    chart_secrets,
    helm_step,
    pods_of,
    remaining,
    uids,
)

# Several helm steps of up to 2 minutes each on a loaded machine; the suite default is 300 s.
pytestmark = pytest.mark.timeout(600)

BROKER = f"{RELEASE}-broker"
BROKER_PVC = f"data-{BROKER}-0"


def test_install_upgrade_rollback_uninstall(kube: Kube, chart_dir: Path) -> None:
    ns = new_namespace(kube, "life")

    # install: every workload Ready, the broker's claim Bound, the ServiceMonitors and the
    # PrometheusRule accepted by their CRDs.
    helm_step(kube, "install", ns, chart_dir)
    assert_healthy(kube, ns)
    assert BROKER_PVC in uids(kube, ns, "persistentvolumeclaims")
    assert len(kube.get(ns, "servicemonitors")) == 4
    assert len(kube.get(ns, "prometheusrules")) == 1
    assert kube.get(ns, "networkpolicies"), "NetworkPolicies are on by default"
    credentials = chart_secrets(kube, ns)
    for name in ("streamer-token", "collector-token", "admin-token", "api-token", "tls"):
        assert f"{RELEASE}-{name}" in credentials, sorted(credentials)
    pvc = uids(kube, ns, "persistentvolumeclaims")
    broker_pods = pods_of(kube, ns, "broker")
    assert "--fsync=always" in args_of(kube, ns, "statefulset", BROKER)

    # upgrade: more collectors, another broker setting. The broker's pod rolls (a new pod with
    # the new arguments) and keeps its claim; the collectors scale to 3.
    helm_step(kube, "upgrade", ns, chart_dir, ["collector.replicas=3", "broker.fsync=interval"])
    assert_healthy(kube, ns)
    assert len(pods_of(kube, ns, "collector")) == 3
    assert "--fsync=interval" in args_of(kube, ns, "statefulset", BROKER)
    rolled = pods_of(kube, ns, "broker")
    assert rolled.keys() == broker_pods.keys() and rolled != broker_pods, "broker pod not rolled"
    assert uids(kube, ns, "persistentvolumeclaims") == pvc, "the broker's claim was replaced"
    assert chart_secrets(kube, ns) == credentials, "tokens or certificate regenerated on upgrade"

    # rollback to the first revision: the old settings, the same claim.
    kube.helm("rollback", RELEASE, "1", "-n", ns, "--wait", "--wait-for-jobs", "--timeout", "2m")
    assert_healthy(kube, ns)
    assert len(pods_of(kube, ns, "collector")) == 2
    assert "--fsync=always" in args_of(kube, ns, "statefulset", BROKER)
    assert uids(kube, ns, "persistentvolumeclaims") == pvc
    assert chart_secrets(kube, ns) == credentials
    history = kube.helm("history", RELEASE, "-n", ns)
    assert "Rollback to 1" in history, history

    # uninstall: only the broker's log (its PVC, by design) and the test's own Secret remain.
    kube.helm("uninstall", RELEASE, "-n", ns, "--wait", "--timeout", "2m")
    assert remaining(kube, ns) == [
        f"persistentvolumeclaim/{BROKER_PVC}",
        "secret/influx-token",
    ]
    assert not pods_of(kube, ns, "broker")

"""A real control plane for the chart (scripts/kube-local.sh) and a release driver on top of it.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler v1.34 run on 127.0.0.1 for the
session; kwok plays one node that marks pods Running and Ready (it runs no container: the image
test covers the containers). helm and kubectl are the real binaries from scripts/install-tools.sh.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import REPO, dependency_free_chart, find_tool
from tests.kube.crds import all_crds

RELEASE = "gputel"
# The influxdb2 subchart cannot be fetched here: every install uses an external InfluxDB
# (nothing has to answer at that URL: kwok runs no container) and a token Secret made by the test.
EXTERNAL_INFLUX = [
    "influxdb2.enabled=false",
    "influx.url=http://influxdb.influx.svc.cluster.local:8086",
    "influx.auth.existingSecret=influx-token",
]


class KubeError(AssertionError):
    """A helm or kubectl command failed; the message holds its output."""


@dataclass
class Kube:
    """kubectl and helm against the session's API server."""

    kubeconfig: Path
    kubectl_bin: str
    helm_bin: str

    def run(self, argv: Sequence[str], stdin: str | None = None, timeout: float = 300) -> str:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "HELM_CACHE_HOME": str(
            self.kubeconfig.parent / "helm-cache"), "HELM_CONFIG_HOME": str(
            self.kubeconfig.parent / "helm-config")}  # fmt: skip
        proc = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, env=env
        )
        if proc.returncode != 0:
            raise KubeError(
                f"{' '.join(argv)} (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        return proc.stdout + proc.stderr

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return self.run([self.kubectl_bin, *args], stdin=stdin)

    def get(self, ns: str, what: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(self.kubectl("-n", ns, "get", what, "-o", "json"))[
            "items"
        ]
        return items

    def apply(self, *docs: dict[str, Any], ns: str | None = None) -> None:
        scope = ["-n", ns] if ns else []
        self.kubectl(*scope, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs))

    def helm(self, *args: str, timeout: float = 300) -> str:
        return self.run([self.helm_bin, *args], timeout=timeout)


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    run_dir = tmp_path_factory.mktemp("kube-run")
    kubectl = find_tool("kubectl")
    script = str(REPO / "scripts" / "kube-local.sh")
    env = {**os.environ, "KUBECTL": kubectl}
    started = time.monotonic()
    up = subprocess.run([script, "up", str(run_dir)], capture_output=True, text=True, env=env)
    try:
        assert up.returncode == 0, f"kube-local.sh up failed:\n{up.stdout}{up.stderr}"
        print(f"control plane up in {time.monotonic() - started:.1f} s")
        k = Kube(run_dir / "admin.kubeconfig", kubectl, find_tool("helm"))
        k.apply(*all_crds())
        for crd in all_crds():
            k.kubectl("wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}")
        yield k
    finally:
        subprocess.run([script, "down", str(run_dir)], capture_output=True, env=env, check=False)


@pytest.fixture(scope="session")
def chart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """chart/ without its dependencies block (the influxdb2 subchart is not fetchable here)."""
    root = tmp_path_factory.mktemp("chart") / "gputel"
    dependency_free_chart(root, find_tool("helm"))
    return root


def new_namespace(kube: Kube, prefix: str) -> str:
    """A namespace with the InfluxDB token Secret the release points at (sent on stdin)."""
    ns = f"{prefix}-{secrets.token_hex(3)}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "influx-token", "namespace": ns},
        "stringData": {"token": secrets.token_urlsafe(24)},
    }
    kube.apply(secret)
    return ns

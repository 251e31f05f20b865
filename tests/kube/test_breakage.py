"""The lifecycle test fails on charts that render and validate but break on a real API server.

Each case copies the chart, plants one realistic mistake, shows that `helm template` plus strict
schema validation still accept it, and then runs the lifecycle test itself on it: it must fail,
for the reason planted.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.kube import release
from tests.kube.conftest import EXTERNAL_INFLUX, RELEASE, Kube, KubeError
from tests.kube.test_lifecycle import test_install_upgrade_rollback_uninstall as lifecycle

# Several helm steps of up to 2 minutes each on a loaded machine; the suite default is 300 s.
pytestmark = pytest.mark.timeout(600)

BROKER_PVC_LABELS = """      spec:
        accessModes:"""


def namespaces(kube: Kube) -> set[str]:
    return set(kube.kubectl("get", "namespaces", "-o", "name").split())


@pytest.fixture(autouse=True)
def drop_leftovers(kube: Kube) -> Iterator[None]:
    """The failed releases stay behind; delete their namespaces so later tests run unloaded."""
    before = namespaces(kube)
    yield
    new = sorted(namespaces(kube) - before)
    if new:
        kube.kubectl("delete", "--wait=false", *new)


def mutant(
    chart_dir: Path, tmp_path: Path, old: str, new: str, template: str = "broker.yaml"
) -> Path:
    """A copy of the chart with `old` replaced by `new` in one template."""
    root = tmp_path / "gputel"
    shutil.copytree(chart_dir, root)
    path = root / "templates" / template
    text = path.read_text()
    assert old in text, f"{template} changed: update this mutation"
    path.write_text(text.replace(old, new, 1))
    return root


def renders_and_validates(kube: Kube, chart: Path) -> None:
    """What the offline chart tests would say: renders, and every object is schema-valid."""
    sets = release.set_args(EXTERNAL_INFLUX)
    text = kube.helm("template", RELEASE, str(chart), "-n", "ns", *sets, "--kube-version", "1.34.0")
    for obj in yaml.safe_load_all(text):
        if obj and obj["apiVersion"].split("/")[0] != "monitoring.coreos.com":
            kubernetes_validate.validate(obj, "1.34.0", strict=True)


def test_an_immutable_statefulset_field_that_changes_on_upgrade_fails(
    kube: Kube, chart_dir: Path, tmp_path: Path
) -> None:
    # A label with the release revision in the claim template: fine on install, but the
    # StatefulSet's volumeClaimTemplates are immutable, so every upgrade is refused.
    chart = mutant(
        chart_dir,
        tmp_path,
        BROKER_PVC_LABELS,
        "          helm.sh/revision: {{ .Release.Revision | quote }}\n" + BROKER_PVC_LABELS,
    )
    renders_and_validates(kube, chart)
    with pytest.raises(KubeError, match="Forbidden: updates to statefulset spec"):
        lifecycle(kube, chart)


def test_a_claim_that_cannot_bind_fails(
    kube: Kube, chart_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hard-coded StorageClass that only exists on the author's cluster: the claim stays Pending.
    chart = mutant(
        chart_dir, tmp_path, BROKER_PVC_LABELS, BROKER_PVC_LABELS.replace(
            "accessModes:", 'storageClassName: "fast-ssd"\n        accessModes:'
        )
    )  # fmt: skip
    renders_and_validates(kube, chart)
    monkeypatch.setattr(release, "HELM_TIMEOUT", "15s")
    with pytest.raises(KubeError, match=r"context deadline exceeded|timed out"):
        lifecycle(kube, chart)
    pending = [p for p in release.problems(kube, pending_namespace(kube)) if p.startswith("PVC/")]
    assert pending == [f"PVC/data-{RELEASE}-broker-0: Pending"], pending


def pending_namespace(kube: Kube) -> str:
    """The namespace the failed lifecycle run left behind (the newest life-* one)."""
    out = kube.kubectl("get", "namespaces", "--sort-by=.metadata.creationTimestamp", "-o", "name")
    return [n for n in out.split() if n.startswith("namespace/life-")][-1].split("/", 1)[1]


def test_credentials_regenerated_on_upgrade_fail(
    kube: Kube, chart_dir: Path, tmp_path: Path
) -> None:
    # Forgetting the `lookup` of the existing token Secrets: every upgrade would mint new tokens
    # (and break every client holding the old ones). helm template cannot see it: lookup is
    # empty there, so both versions render the same.
    chart = mutant(
        chart_dir,
        tmp_path,
        '{{- if and $old $old.data (hasKey $old.data "token") }}',
        "{{- if false }}",
        template="auth-secrets.yaml",
    )
    renders_and_validates(kube, chart)
    with pytest.raises(AssertionError, match="regenerated on upgrade"):
        lifecycle(kube, chart)


def test_a_pod_mounting_a_missing_secret_fails(kube: Kube, chart_dir: Path, tmp_path: Path) -> None:
    # A misspelt Secret in a volume: a kubelet would never start the pod (FailedMount). kwok
    # starts nothing, so helm --wait is satisfied; the lifecycle test's own check is not.
    chart = mutant(
        chart_dir,
        tmp_path,
        'secretName: {{ include "gputel.tlsSecretName" $root }}',
        'secretName: {{ include "gputel.tlsSecretName" $root }}-certs',
        template="_trust.tpl",
    )
    renders_and_validates(kube, chart)
    with pytest.raises(AssertionError, match=f"secret {RELEASE}-tls-certs missing"):
        lifecycle(kube, chart)

"""Offline chart fixtures: the tools, a dependency-free copy of the chart, and rendering helpers.

`helm template` refuses to render a chart whose declared dependency is missing, even with its
condition false, and no chart repository is reachable here. So the tests render a copy of
`chart/` whose Chart.yaml has the `dependencies:` block removed. Nothing else changes: the parent
templates render exactly as they would next to the real influxdb2 subchart, but the subchart's own
objects are not rendered and not tested (docs/kubernetes.md says so).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "chart"
VALUES_DIR = Path(__file__).resolve().parent / "values"
RELEASE = "gputel"
NAMESPACE = "gputel"
KUBE_VERSION = "1.30.0"
INSTALL_HINT = "run scripts/install-tools.sh (it installs helm, kubectl and promtool)"
TOOLS_DIR = Path(os.environ.get("GPUTEL_TOOLS_DIR", Path.home() / ".cache/gputel/tools"))

# Variants rendered by the tests: values files under tests/chart/values/ plus --set pairs.
# The token of the "external-token" variant is made up at test time, never written to a file.
VARIANTS: dict[str, tuple[list[str], list[str]]] = {
    "default": ([], []),
    "external-secret": (["external-secret.yaml"], []),
    "external-token": (["external.yaml"], ["influx.auth.token=TEST-ONLY-token-from-the-cli"]),
    "networkpolicy": (["external-secret.yaml", "networkpolicy.yaml"], []),
    "scaled": (["external-secret.yaml", "scaled.yaml"], []),
    "minimal": (["external-secret.yaml", "minimal.yaml"], []),
    "scrape": (["external-secret.yaml", "scrape.yaml"], []),
    "kafka": (["external-secret.yaml", "kafka.yaml"], []),
    "kafka-mtls": (["external-secret.yaml", "kafka-mtls.yaml"], []),
}


def find_tool(name: str) -> str:
    """Path of a tool from the tools cache, the venv or PATH; fails the test when missing."""
    candidates = [TOOLS_DIR / "current" / name, Path(sys.executable).parent / name]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: {INSTALL_HINT}", pytrace=False)
    return found


def run(cmd: list[str], *, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


@dataclass
class Rendered:
    """The objects of one `helm template` run, with lookups the tests need."""

    objects: list[dict] = field(default_factory=list)
    text: str = ""

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict:
        for o in self.of_kind(kind):
            if o["metadata"]["name"] == name:
                return o
        raise KeyError(f"{kind}/{name} not rendered")

    def pod_specs(self) -> list[tuple[str, dict]]:
        """(kind/name, pod spec) of every workload."""
        kinds = ("Deployment", "StatefulSet", "Job", "DaemonSet")
        return [
            (f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
            for o in self.objects
            if o["kind"] in kinds
        ]


class Chart:
    """A dependency-free copy of chart/ and a cached renderer for it."""

    def __init__(self, root: Path, helm: str) -> None:
        self.root = root
        self.helm = helm
        self._cache: dict[str, Rendered] = {}

    def args(self, values: Sequence[str], sets: Sequence[str]) -> list[str]:
        out: list[str] = []
        for v in values:
            out += ["-f", str(VALUES_DIR / v)]
        for s in sets:
            out += ["--set-string", s]
        return out

    def template(
        self, values: Sequence[str] = (), sets: Sequence[str] = (), extra: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        """`helm template` of the copy with files from tests/chart/values and --set-string pairs."""
        cmd = [self.helm, "template", RELEASE, str(self.root), "-n", NAMESPACE]
        cmd += ["--kube-version", KUBE_VERSION, *self.args(values, sets), *extra]
        return run(cmd)

    def render(self, variant: str) -> Rendered:
        if variant not in self._cache:
            values, sets = VARIANTS[variant]
            proc = self.template(values, sets)
            assert proc.returncode == 0, f"helm template ({variant}) failed:\n{proc.stderr}"
            docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
            self._cache[variant] = Rendered(docs, proc.stdout)
        return self._cache[variant]


@pytest.fixture(scope="session")
def helm() -> str:
    return find_tool("helm")


@pytest.fixture(scope="session")
def promtool() -> str:
    return find_tool("promtool")


def dependency_free_chart(root: Path, helm: str) -> Chart:
    """Copy chart/ to `root` without its `dependencies:` block and return its renderer."""
    shutil.copytree(CHART, root, ignore=shutil.ignore_patterns("charts", "*.tgz"))
    meta = yaml.safe_load((root / "Chart.yaml").read_text())
    assert meta.pop("dependencies"), "chart/Chart.yaml must declare the influxdb2 dependency"
    (root / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return Chart(root, helm)


@pytest.fixture(scope="session")
def chart(helm: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chart]:
    yield dependency_free_chart(tmp_path_factory.mktemp("chart") / "gputel", helm)


@pytest.fixture(scope="session", params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)

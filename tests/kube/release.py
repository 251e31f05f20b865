"""A helm release on the real API server, and the checks every step of its life must pass.

`helm --wait` is necessary but not enough: the checks read the objects back and demand that every
workload has all its replicas updated and Ready, every PVC is Bound, every hook Job succeeded, and
that the namespace holds no Warning event.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.kube.conftest import EXTERNAL_INFLUX, RELEASE, Kube
from tests.support import wait_until

WORKLOADS = "deployments,statefulsets"
# helm's --timeout for install and upgrade; the breakage tests shorten it where a step must fail.
HELM_TIMEOUT = "2m"


def set_args(sets: Sequence[str]) -> list[str]:
    return [x for s in sets for x in ("--set-string" if _is_string(s) else "--set", s)]


def _is_string(pair: str) -> bool:
    """URLs and names as strings; numbers and booleans typed (the values schema is strict)."""
    value = pair.split("=", 1)[1]
    return not (value.isdigit() or value in ("true", "false") or value.startswith("{"))


def helm_step(
    kube: Kube,
    verb: str,
    ns: str,
    chart: Path | None,
    sets: Sequence[str] = (),
) -> str:
    """helm install/upgrade with --wait; the output must carry no warning (e.g. unknown field)."""
    target = [str(chart)] if chart else []
    out = kube.helm(
        verb, RELEASE, *target, "-n", ns, "--wait", "--wait-for-jobs", "--timeout", HELM_TIMEOUT,
        *set_args([*EXTERNAL_INFLUX, *sets]),
    )  # fmt: skip
    assert "warning" not in out.lower(), out
    return out


def not_ready(obj: dict[str, Any]) -> str | None:
    """Why a Deployment or StatefulSet is not fully rolled out and Ready, or None."""
    spec, status = obj["spec"], obj.get("status", {})
    want = spec.get("replicas", 1)
    name = f"{obj['kind']}/{obj['metadata']['name']}"
    if status.get("observedGeneration") != obj["metadata"]["generation"]:
        return f"{name}: generation not observed yet"
    for field in ("readyReplicas", "updatedReplicas", "availableReplicas"):
        if field == "availableReplicas" and obj["kind"] == "StatefulSet":
            continue
        if status.get(field, 0) != want:
            return f"{name}: {field}={status.get(field, 0)}, want {want}"
    if obj["kind"] == "StatefulSet" and status.get("currentRevision") != status.get(
        "updateRevision"
    ):
        return f"{name}: revision {status.get('currentRevision')} != {status.get('updateRevision')}"
    return None


def problems(kube: Kube, ns: str) -> list[str]:
    """Everything that keeps the release from being healthy right now."""
    out = [why for o in kube.get(ns, WORKLOADS) if (why := not_ready(o))]
    for pvc in kube.get(ns, "persistentvolumeclaims"):
        if pvc.get("status", {}).get("phase") != "Bound":
            out.append(f"PVC/{pvc['metadata']['name']}: {pvc.get('status', {}).get('phase')}")
    for pod in kube.get(ns, "pods"):
        if pod["metadata"].get("deletionTimestamp"):
            out.append(f"pod/{pod['metadata']['name']}: terminating")
            continue
        if pod["status"].get("phase") == "Succeeded":
            continue
        ready = any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod["status"].get("conditions", [])
        )
        if not ready:
            out.append(f"pod/{pod['metadata']['name']}: not Ready ({pod['status'].get('phase')})")
    out += missing_volume_sources(kube, ns)
    for job in kube.get(ns, "jobs"):
        if not job.get("status", {}).get("succeeded"):
            out.append(f"job/{job['metadata']['name']}: not succeeded")
    return out


def missing_volume_sources(kube: Kube, ns: str) -> list[str]:
    """Secrets, ConfigMaps and keys pods mount that do not exist. A kubelet would report
    FailedMount and never start the pod; kwok mounts nothing, so the test looks itself."""
    have = {
        "secret": {o["metadata"]["name"]: set(o.get("data", {})) for o in kube.get(ns, "secrets")},
        "configMap": {
            o["metadata"]["name"]: set(o.get("data", {})) for o in kube.get(ns, "configmaps")
        },
    }
    out = []
    for pod in kube.get(ns, "pods"):
        for vol in pod["spec"].get("volumes", []):
            for src in [vol, *vol.get("projected", {}).get("sources", [])]:
                for kind, key in (("secret", "secretName"), ("configMap", "name")):
                    ref = src.get(kind) or {}
                    name = ref.get(key) or ref.get("name")
                    if not name or ref.get("optional"):
                        continue
                    where = f"pod/{pod['metadata']['name']}: {kind} {name}"
                    if name not in have[kind]:
                        out.append(f"{where} missing")
                        continue
                    keys = {i["key"] for i in ref.get("items", [])} - have[kind][name]
                    out += [f"{where} has no key {k}" for k in sorted(keys)]
    return out


def assert_healthy(kube: Kube, ns: str, timeout_s: float = 30) -> None:
    """Every workload Ready and rolled out, every PVC Bound, no Warning event."""
    found: list[str] = []

    def healthy() -> bool:
        found[:] = problems(kube, ns)
        return not found

    assert wait_until(healthy, timeout_s, interval_s=0.5), found
    assert not warnings(kube, ns), warnings(kube, ns)


def warnings(kube: Kube, ns: str) -> list[str]:
    """Warning events in the namespace, but for two races of the control plane itself (both seen
    under load, both on real clusters too; nothing a chart can cause):

    - a StatefulSet pod deleted on rollout while the scheduler was binding it: "FailedScheduling:
      running Bind plugin ...: pods "<name>" not found", or "... pod <name> is being deleted,
      cannot be assigned to a host" when the bind meets the deletion midway; its successor is
      scheduled normally;
    - the API server's ClusterIP repair loop meeting a Service created during its pass:
      "ClusterIPNotAllocated: ... is not allocated; repairing".
    """
    out = []
    for e in kube.get(ns, "events"):
        if e.get("type") != "Warning":
            continue
        name, message = e["involvedObject"]["name"], e["message"]
        if e["reason"] == "FailedScheduling" and (
            f'pods "{name}" not found' in message or f"pod {name} is being deleted" in message
        ):
            continue
        if e["reason"] == "ClusterIPNotAllocated" and message.endswith("repairing"):
            continue
        out.append(f"{e['involvedObject']['kind']}/{name} {e['reason']}: {message}")
    return out


def uids(kube: Kube, ns: str, what: str) -> dict[str, str]:
    return {o["metadata"]["name"]: o["metadata"]["uid"] for o in kube.get(ns, what)}


def pods_of(kube: Kube, ns: str, component: str) -> dict[str, str]:
    pods = kube.get(ns, "pods")
    return {
        p["metadata"]["name"]: p["metadata"]["uid"]
        for p in pods
        if p["metadata"]["labels"].get("app.kubernetes.io/component") == component
        and not p["metadata"].get("deletionTimestamp")
    }


def chart_secrets(kube: Kube, ns: str) -> dict[str, dict[str, str]]:
    """name -> data of the Secrets the chart made (tokens, token files, TLS)."""
    out = kube.kubectl(
        "-n", ns, "get", "secrets", "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "json"
    )
    return {s["metadata"]["name"]: s.get("data", {}) for s in json.loads(out)["items"]}


def args_of(kube: Kube, ns: str, kind: str, name: str) -> list[str]:
    obj = json.loads(kube.kubectl("-n", ns, "get", kind, name, "-o", "json"))
    args: list[str] = obj["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def remaining(kube: Kube, ns: str) -> list[str]:
    """kind/name of every namespaced object left (events and the API's own objects aside)."""
    kinds = "all,pvc,secrets,configmaps,serviceaccounts,roles,rolebindings,networkpolicies,"
    kinds += "poddisruptionbudgets,servicemonitors,prometheusrules,jobs"
    out = kube.kubectl("-n", ns, "get", kinds, "-o", "name")
    own = ("configmap/kube-root-ca.crt", "serviceaccount/default")
    return sorted(line for line in out.split() if line and not line.endswith(own))

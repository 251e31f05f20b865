"""CustomResourceDefinitions for the Prometheus-operator kinds the chart creates, generated.

The operator's own CRD manifests cannot be fetched here, so the CRDs are generated from the
pydantic models of `cloudcoil-models-prometheus-operator` (the package the render tests already
validate against): the JSON schema of `spec` turned into a structural OpenAPI v3 schema the API
server accepts. The server then validates and prunes ServiceMonitor and PrometheusRule objects
the way it does on a cluster with the operator installed (types, enums, required fields).
"""

from __future__ import annotations

from typing import Any

from cloudcoil.models.prometheus_operator import v1 as promv1
from pydantic import BaseModel

GROUP = "monitoring.coreos.com"
KINDS: dict[str, tuple[type[BaseModel], str]] = {
    "ServiceMonitor": (promv1.ServiceMonitor, "servicemonitors"),
    "PrometheusRule": (promv1.PrometheusRule, "prometheusrules"),
}
DROP = {"title", "default", "format", "examples", "description", "discriminator"}


def structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON-schema node as a structural schema: refs inlined, nullables unwrapped."""
    if "$ref" in node:
        return structural(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    alternatives = node.get("anyOf") or node.get("oneOf")
    if alternatives:
        kept = [a for a in alternatives if a.get("type") != "null"]
        types = {a.get("type") for a in kept}
        if len(kept) == 1:
            return structural(kept[0], defs)
        if types <= {"integer", "string"}:
            return {"x-kubernetes-int-or-string": True}
        return {"x-kubernetes-preserve-unknown-fields": True}
    out: dict[str, Any] = {k: v for k, v in node.items() if k not in DROP}
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if "properties" in out:
        out["properties"] = {k: structural(v, defs) for k, v in out["properties"].items()}
        out.setdefault("type", "object")
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = structural(out["additionalProperties"], defs)
    elif "additionalProperties" in out:
        del out["additionalProperties"]
        if "properties" not in out:
            out["x-kubernetes-preserve-unknown-fields"] = True
    if "items" in out:
        out["items"] = structural(out["items"], defs)
    if "type" not in out and not any(k.startswith("x-kubernetes") for k in out):
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def crd(kind: str) -> dict[str, Any]:
    model, plural = KINDS[kind]
    full = model.model_json_schema(by_alias=True)
    defs = full.get("$defs", {})
    spec = structural(full["properties"]["spec"], defs)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                            },
                        }
                    },
                }
            ],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    return [crd(kind) for kind in KINDS]

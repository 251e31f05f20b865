"""The OpenAPI 3.1 document, generated from the routes the app really has.

Each view is wrapped by `operation(Operation(...))`, which records its summary, query `Param`s,
response TypedDict and error statuses on the view and rejects undeclared query parameters.
`document(app)` walks `app.url_map`, reads those records and turns the TypedDicts into JSON
Schema with pydantic. `python -m gateway.openapi --out gateway/openapi.json` (`make
openapi-gen`) writes the committed copy; a test fails when it is stale.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from flask import Flask, request
from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from gateway import params, schemas
from gateway.errors import PROBLEM_JSON

F = TypeVar("F", bound=Callable[..., Any])
ATTR = "_gputel_operation"
TITLE = "gputel gateway"
VERSION = "1"
DEFAULT_OUT = Path(__file__).with_name("openapi.json")
_REASONS = {
    400: "Bad parameter (problem+json names it in `detail` and `parameter`).",
    401: "No valid bearer token (when the gateway runs with --auth-tokens); "
    "`WWW-Authenticate: Bearer` says so.",
    403: "The token lacks the `read` role.",
    404: "No GPU with this uuid or index has data.",
    409: "The index matches GPUs on several hosts; `candidates` lists their uuids and hostnames.",
    502: "The store failed to answer.",
    503: "The store cannot be reached; retry after the Retry-After seconds.",
}

# gunicorn answers these itself, before the app sees the request (gateway.worker.write_problem:
# problem+json whose `instance` is empty, the request not being read): a request line over 4,094
# bytes (e.g. a query string repeating a parameter thousands of times) and a header over
# gunicorn's limits. Every operation can get them, so every operation documents them.
_HTTP_LIMITS = {
    414: "The request line is longer than 4,094 bytes (gunicorn's limit_request_line); "
    "`instance` is empty.",
    431: "The request headers exceed gunicorn's limits (limit_request_field_size, "
    "limit_request_fields); `instance` is empty.",
}


@dataclass(frozen=True, slots=True)
class Operation:
    """What the document says about one view; `response` is a TypedDict or a media type."""

    summary: str
    tag: str
    response: type | str
    description: str = ""
    query: tuple[params.Param[Any], ...] = ()
    path: Mapping[str, str] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    strict_query: bool = True  # probes and docs ignore query parameters


def operation(op: Operation) -> Callable[[F], F]:
    """Attach `op` to a view and reject query parameters it does not declare (400)."""

    def wrap(view: F) -> F:
        @functools.wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            if op.strict_query:
                params.reject_unknown(request.args, op.query)
            return view(*args, **kwargs)

        setattr(checked, ATTR, op)
        return cast(F, checked)

    return wrap


def _path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


SECURED_PREFIX = "/api/"
SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "A token of a principal with the `read` role, required on /api/v1 when "
        "the gateway runs with --auth-tokens (docs/security.md).",
    }
}


def _responses(
    op: Operation, ref: Callable[[type], dict[str, Any]], secured: bool = False
) -> dict[str, Any]:
    if isinstance(op.response, str):
        ok = {op.response: {"schema": {"type": "string"}}}
    else:
        ok = {"application/json": {"schema": ref(op.response)}}
    out: dict[str, Any] = {"200": {"description": "OK", "content": ok}}
    reasons = {s: _REASONS[s] for s in sorted({*op.errors, *((401, 403) if secured else ())})}
    for status, reason in {**reasons, **_HTTP_LIMITS}.items():
        out[str(status)] = {
            "description": reason,
            "content": {PROBLEM_JSON: {"schema": ref(schemas.Problem)}},
        }
    return out


def _operation_doc(
    path: str, endpoint: str, op: Operation, ref: Callable[[type], dict[str, Any]]
) -> dict[str, Any]:
    path_params = [
        {"name": n, "in": "path", "required": True, "description": d, "schema": {"type": "string"}}
        for n, d in op.path.items()
    ]
    doc: dict[str, Any] = {"operationId": endpoint.replace(".", "_"), "summary": op.summary}
    if op.description:
        doc["description"] = op.description
    doc["tags"] = [op.tag]
    if path_params or op.query:
        doc["parameters"] = path_params + [p.openapi() for p in op.query]
    secured = path.startswith(SECURED_PREFIX)
    if secured:
        doc["security"] = [{"bearerAuth": []}]
    doc["responses"] = _responses(op, ref, secured)
    return doc


def _operations(app: Flask) -> list[tuple[str, str, str, Operation]]:
    """Return (path, method, endpoint, operation) for every documented route, sorted."""
    found = []
    for rule in app.url_map.iter_rules():
        op = getattr(app.view_functions[rule.endpoint], ATTR, None)
        if op is None:
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((_path(rule.rule), method.lower(), rule.endpoint, op))
    return sorted(found, key=lambda f: (f[0], f[1]))


class _Schemas:
    """Collects the TypedDicts the operations use, then renders them as components."""

    def __init__(self) -> None:
        self.types: dict[str, type] = {}

    def ref(self, tp: type) -> dict[str, Any]:
        self.types[tp.__name__] = tp
        return {"$ref": f"#/components/schemas/{tp.__name__}"}

    def components(self) -> dict[str, Any]:
        adapters: list[tuple[str, JsonSchemaMode, TypeAdapter[Any]]] = [
            (n, "serialization", TypeAdapter(t)) for n, t in sorted(self.types.items())
        ]
        _, defs = TypeAdapter.json_schemas(adapters, ref_template="#/components/schemas/{model}")
        found: dict[str, Any] = defs.get("$defs", {})
        for schema in found.values():
            if schema.get("type") == "object":
                schema["additionalProperties"] = False
        return dict(sorted(found.items()))


def document(app: Flask) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of every documented route of `app`."""
    collected = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for path, method, endpoint, op in _operations(app):
        paths.setdefault(path, {})[method] = _operation_doc(path, endpoint, op, collected.ref)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": VERSION,
            "description": "GPU telemetry over REST. Times are RFC 3339 or Unix seconds; "
            "time bounds are inclusive; errors are RFC 9457 problem+json.",
        },
        "paths": paths,
        "components": {
            "schemas": collected.components(),
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


def render(doc: Mapping[str, Any]) -> str:
    """Return the document as the committed file's text (stable formatting)."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the document of the app (`make openapi-gen`); with --check, fail when stale."""
    parser = argparse.ArgumentParser(prog="python -m gateway.openapi", description=main.__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="exit 1 when --out is stale")
    args = parser.parse_args(argv)
    from gateway.app import create_app
    from gateway.config import GatewayConfig

    text = render(document(create_app(GatewayConfig())))
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        return 0 if current == text else 1
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

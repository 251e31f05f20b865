"""Property-based fuzzing of the app against its own OpenAPI document: no 5xx, responses conform."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.config import GatewayConfig
from store import open_store
from tests.gateway import data
from tests.gateway.conftest import Gateway, app_for

CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module", params=["wsgi", "live-gunicorn"])
def api_schema(request, tmp_path_factory) -> Iterator[schemathesis.schemas.BaseSchema]:
    """The document served by the app on a seeded SQLite file: in-process, and by gunicorn."""
    folder = tmp_path_factory.mktemp("fuzz")
    config = GatewayConfig(store=f"sqlite:{folder / 'telemetry.db'}")
    with open_store(config.store) as store:
        store.write(data.seed())
    if request.param == "wsgi":
        for app in app_for(config):
            yield schemathesis.openapi.from_wsgi("/openapi.json", app)
        return
    server = Gateway(config, folder / "gateway.log")
    try:
        yield schemathesis.openapi.from_url(server.url + "/openapi.json")
    finally:
        server.stop()


def strategy(operation, mode: GenerationMode):
    """Return cases of `operation`; half of them on a GPU that has data, when it takes an id."""
    cases = operation.as_strategy(mode)
    if "{gpu_id}" in operation.path:
        known = operation.as_strategy(mode, path_parameters={"gpu_id": data.GPUS[0].uuid})
        cases = st.one_of(cases, known)
    return cases


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_conforms(api_schema, mode: GenerationMode) -> None:
    statuses: dict[str, set[int]] = {}
    for result in api_schema.get_all_operations():
        operation = result.ok()
        declared = api_schema.raw_schema["paths"][operation.path]["get"].get("parameters", [])
        if mode == GenerationMode.NEGATIVE and all(p["in"] != "query" for p in declared):
            continue  # nothing to make invalid (any text is a valid id)

        @given(case=strategy(operation, mode))
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
        def conforms(case) -> None:
            response = case.call_and_validate(checks=CHECKS)
            statuses.setdefault(case.operation.label, set()).add(response.status_code)

        conforms()
    if mode == GenerationMode.POSITIVE:  # all but the document itself (schemathesis skips it)
        paths = set(api_schema.raw_schema["paths"]) - {"/openapi.json"}
        assert set(statuses) == {f"GET {path}" for path in paths}
        assert 200 in statuses["GET /api/v1/gpus/{gpu_id}/telemetry"]
    else:
        assert statuses["GET /api/v1/gpus/{gpu_id}/telemetry"] >= {400}

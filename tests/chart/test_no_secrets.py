"""No token or password literal anywhere in the chart or its default values."""

from __future__ import annotations

import re

import yaml

from tests.chart.conftest import CHART, Chart

SECRET_KEY = re.compile(r"(token|password|secret)$", re.IGNORECASE)
# Long mixed-case-and-digit runs look like tokens (InfluxDB tokens are 88 base64 characters).
TOKEN_SHAPE = re.compile(
    r"(?=[^\s\"']*[A-Z])(?=[^\s\"']*[a-z])(?=[^\s\"']*\d)[A-Za-z0-9+/_=-]{32,}"
)
# A YAML key ending in token/password: its value may only be empty or a template expression.
SECRET_LINE = re.compile(r"^\s*-?\s*[\w.-]*(token|password)\s*:\s*(?P<value>.*)$", re.IGNORECASE)


def _walk(node: object, path: str = ""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, node


def test_default_values_hold_no_secret_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path, value in _walk(values):
        if SECRET_KEY.search(path):
            assert value in ("", None), f"{path} has a default value"


def test_no_file_of_the_chart_contains_a_secret_literal() -> None:
    for path in sorted(CHART.rglob("*")):
        if not path.is_file() or path.suffix == ".tgz":
            continue
        where = path.relative_to(CHART)
        text = path.read_text()
        assert not TOKEN_SHAPE.findall(text), f"{where}: token-shaped literal"
        for line in text.splitlines():
            m = SECRET_LINE.match(line)
            if m:
                value = m["value"].split("#")[0].strip()
                harmless = value in ("", '""', "''", "true", "false") or value.startswith("{{")
                assert harmless, f"{where}: {line}"


def test_secret_checks_catch_a_literal() -> None:
    assert TOKEN_SHAPE.findall("token: aB3xYz9Q-kLmN0pQrStUvWxYz12345678_AbCdEf==")
    assert SECRET_LINE.match('    password: "hunter2"')["value"] == '"hunter2"'


GENERATED = {
    "gputel-streamer-token",
    "gputel-collector-token",
    "gputel-admin-token",
    "gputel-api-token",
    "gputel-gateway-token",
    "gputel-broker-auth",
    "gputel-gateway-auth",
    "gputel-tls",
}


def test_no_rendered_variant_without_a_token_on_the_cli_contains_secret_data(chart: Chart) -> None:
    """The only Secrets are the chart-generated credentials, random at every fresh render."""
    for variant in ("default", "external-secret", "networkpolicy", "scaled", "minimal"):
        secrets = chart.render(variant).of_kind("Secret")
        assert {s["metadata"]["name"] for s in secrets} == GENERATED, variant
    again = chart.template([], []).stdout
    first = {s["metadata"]["name"]: s["data"] for s in chart.render("default").of_kind("Secret")}
    for doc in yaml.safe_load_all(again):
        if doc and doc["kind"] == "Secret":
            for key, value in doc["data"].items():
                assert first[doc["metadata"]["name"]][key] != value, (doc["metadata"]["name"], key)

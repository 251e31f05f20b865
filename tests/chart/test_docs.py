"""What the README and the docs tell a user to run matches what the chart deploys."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.chart.conftest import CHART, REPO, Chart
from walbroker.security import ExposureError, SecurityConfig, check_exposure


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = re.search(r"^#{1,3} ", text[start + len(heading) :], re.MULTILINE)
    return text[start : start + len(heading) + (end.start() if end else len(text))]


def test_readme_kind_steps_query_the_gateway_as_the_default_chart_serves_it(chart: Chart) -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert defaults["tls"]["enabled"] and defaults["auth"]["enabled"]
    kind = section((REPO / "README.md").read_text(), "### KIND, step by step")
    assert "http://localhost:8080/api" not in kind, "plain HTTP without a token fails"
    assert "curl -s --cacert gputel-ca.crt --resolve gputel-gateway:8080:127.0.0.1" in kind
    assert '-H "Authorization: Bearer $TOKEN" "https://gputel-gateway:8080$1"' in kind
    # The Secrets it reads are the ones the default chart makes.
    secrets = {s["metadata"]["name"] for s in chart.render("default").of_kind("Secret")}
    for name in re.findall(r"get secret (\S+) ", kind):
        if name.startswith("gputel-"):
            assert name in secrets, name
    assert {"gputel-api-token", "gputel-tls"} <= set(re.findall(r"get secret (\S+) ", kind))


def test_security_doc_states_the_brokers_listen_rule() -> None:
    # walbroker listens beyond loopback with TLS and a token file OR a client CA (either one).
    for given in ({"auth_tokens": Path("t")}, {"tls_client_ca": Path("ca")}):
        sec = SecurityConfig(tls_cert=Path("c"), tls_key=Path("k"), **given)
        check_exposure("walbroker", "0.0.0.0:7070", sec.authenticated, sec.tls, insecure=False)
    with pytest.raises(ExposureError):
        check_exposure("walbroker", "0.0.0.0:7070", False, True, insecure=False)
    text = " ".join((REPO / "docs" / "security.md").read_text().split())
    assert "the broker: a token file or a client CA" in text
    assert "for the broker also a client CA" not in text


def test_default_scrape_dns_is_the_headless_service_the_docs_create() -> None:
    # A ClusterIP Service resolves to one load-balanced address: one exporter per scrape.
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    (dns,) = defaults["streamer"]["scrape"]["dns"]
    docs = (REPO / "docs" / "kubernetes.md").read_text()
    manifest = section(docs, "## Scraping the GPU operator's dcgm-exporter")
    match = re.search(r"kubectl -n (\S+) apply -f - <<'YAML'\n(.*?)\n\s*YAML", manifest, re.S)
    assert match, "the docs' headless Service manifest moved"
    service = yaml.safe_load(textwrap.dedent(match[2]))
    assert service["spec"]["clusterIP"] == "None"
    name, port = service["metadata"]["name"], service["spec"]["ports"][0]["port"]
    assert dns == f"{name}.{match[1]}.svc.cluster.local:{port}"

"""Bearer tokens and TLS on the real gateway: gunicorn serving HTTPS with a token file.

401 problem+json with WWW-Authenticate without a (valid) token, 403 with a token lacking
the read role, 200 with one; probes stay open; /metrics and the docs as configured; one
JSON access-log line per request without query values; a non-loopback bind refused.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from store import open_store
from tests.fixtures.broker import free_port
from tests.fixtures.process import ManagedProcess
from tests.fixtures.secure import Credentials
from tests.gateway import data
from tests.support import wait_until

BIN = Path(sys.executable).parent


class SecureGateway(ManagedProcess):
    """gputel-gateway over HTTPS with a token file, on a free loopback port."""

    def __init__(
        self, config: GatewayConfig, creds: Credentials, log_path: Path, *extra: str
    ) -> None:
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.ctx = ssl.create_default_context(cafile=str(creds.ca_file))
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPUTEL_")}
        env["GPUTEL_LOG_FORMAT"] = "json"
        argv = [str(BIN / "gputel-gateway"), f"--bind=127.0.0.1:{self.port}", "--workers=2",
                f"--store={config.store}", f"--auth-tokens={creds.token_file}",
                f"--tls-cert={creds.server_cert}", f"--tls-key={creds.server_key}",
                "--auth-docs", *extra]  # fmt: skip
        super().__init__(argv, log_path)
        self.spawn(env, inherit=False)
        deadline = time.monotonic() + 30
        while self.get("/healthz")[0] != 200:
            assert self.running and time.monotonic() < deadline, self.log_tail()
            time.sleep(0.1)

    def get(self, path: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url + path)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10, context=self.ctx) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, dict(exc.headers), exc.read()
        except OSError:
            return 0, {}, b""


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    c = Credentials(tmp_path_factory.mktemp("creds"))
    c.add("grafana", "read")
    c.add("streamer", "produce")
    return c


@pytest.fixture(scope="module")
def gateway(
    creds: Credentials, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecureGateway]:
    folder = tmp_path_factory.mktemp("gw")
    config = GatewayConfig(store=f"sqlite:{folder / 'telemetry.db'}")
    with open_store(config.store) as store:
        store.write(data.seed())
    gw = SecureGateway(config, creds, folder / "gateway.log")
    yield gw
    gw.terminate(15)


def test_401_403_200_over_https(gateway: SecureGateway, creds: Credentials) -> None:
    status, headers, body = gateway.get("/api/v1/gpus")
    assert status == 401 and headers["Content-Type"] == "application/problem+json"
    assert headers["WWW-Authenticate"] == 'Bearer realm="gputel"'
    assert json.loads(body)["status"] == 401
    status, headers, body = gateway.get("/api/v1/gpus", token="gpt_wrong")
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    status, headers, body = gateway.get("/api/v1/hosts", token=creds.tokens["streamer"])
    assert status == 403 and headers["Content-Type"] == "application/problem+json"
    assert "read" in json.loads(body)["detail"]
    status, _, body = gateway.get("/api/v1/gpus?limit=2", token=creds.tokens["grafana"])
    assert status == 200 and len(json.loads(body)["gpus"]) == 2
    latest = f"/api/v1/latest?metric={data.UTIL}&limit=2"
    assert gateway.get(latest)[0] == 401
    assert gateway.get(latest, token=creds.tokens["streamer"])[0] == 403
    status, _, body = gateway.get(latest, token=creds.tokens["grafana"])
    assert status == 200 and len(json.loads(body)["gpus"]) == 2


def test_probes_open_metrics_and_docs_as_configured(
    gateway: SecureGateway, creds: Credentials
) -> None:
    assert gateway.get("/healthz")[0] == 200 and gateway.get("/readyz")[0] == 200
    assert gateway.get("/metrics")[0] == 200  # open unless --auth-metrics
    assert gateway.get("/openapi.json")[0] == 401  # --auth-docs
    assert gateway.get("/swagger/")[0] == 200  # static; it sends the web view's token
    assert gateway.get("/openapi.json", token=creds.tokens["grafana"])[0] == 200


def test_plain_http_against_the_tls_gateway_fails(gateway: SecureGateway) -> None:
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{gateway.port}/healthz", timeout=5).read()


def test_access_log_one_json_line_per_request_without_query_values(
    gateway: SecureGateway, creds: Credentials
) -> None:
    secret = "s3cr3t-value"
    gateway.get(f"/api/v1/gpus?hostname={secret}", token=creds.tokens["grafana"])
    gateway.get("/api/v1/hosts")
    time.sleep(0.5)
    text = gateway.log_text()
    lines = [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]
    access = [ln for ln in lines if ln.get("logger") == "gateway.access"]
    ok = [a for a in access if a["route"] == "/api/v1/gpus" and a["principal"] == "grafana"]
    assert ok and ok[-1]["status"] == 200 and ok[-1]["latency_ms"] >= 0
    refused = [a for a in access if a["route"] == "/api/v1/hosts" and a["status"] == 401]
    assert refused and refused[-1]["principal"] is None
    assert secret not in text
    for token in creds.tokens.values():
        assert token not in text


def test_non_loopback_bind_without_auth_and_tls_is_refused(tmp_path: Path) -> None:
    out = subprocess.run(
        [str(BIN / "gputel-gateway"), f"--store=sqlite:{tmp_path / 'x.db'}",
         f"--bind=0.0.0.0:{free_port()}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2
    assert "refuses to listen" in out.stderr and "authentication and TLS" in out.stderr


def test_token_file_changes_apply_without_restart(
    gateway: SecureGateway, creds: Credentials
) -> None:
    token = creds.add("dashboards", "read")
    assert wait_until(lambda: gateway.get("/api/v1/hosts", token=token)[0] == 200, 10)
    creds.lines = [ln for ln in creds.lines if not ln.startswith("dashboards ")]
    creds.save()
    assert wait_until(lambda: gateway.get("/api/v1/hosts", token=token)[0] == 401, 10)


def _served_cert(gateway: SecureGateway) -> bytes:
    """The certificate one new connection is served (b"" while workers restart)."""
    try:
        with (
            socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as raw,
            gateway.ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            return tls.getpeercert(binary_form=True) or b""
    except OSError:
        return b""


def _der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


def _renewal_without_a_signal(gateway: SecureGateway, creds: Credentials) -> None:
    """Renewal as kubelet does it for cert-manager's Secret: new files, no signal, no restart.

    A half-written pair keeps the previous certificate in use (and is logged); once the
    files are whole, every worker serves the new one within seconds; the process stays.
    """
    pid = gateway.proc.pid if gateway.proc else 0
    before = _der(creds.server_cert.read_bytes())
    # Both workers have their context (a worker still booting would load the broken file).
    assert wait_until(lambda: gateway.log_text().count("TLS certificate loaded") >= 2, 30)
    assert _served_cert(gateway) == before
    creds.server_cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot yet\n")  # half written
    deadline = time.monotonic() + 2.5  # past two checks of each worker
    while time.monotonic() < deadline:
        assert _served_cert(gateway) == before
        time.sleep(0.2)
    assert wait_until(lambda: "TLS certificate or key unusable" in gateway.log_text(), 10)

    renewed = creds.ca.issue("broker", ["127.0.0.1", "localhost"])
    staged = creds.server_cert.with_suffix(".new")
    staged.write_bytes(renewed.cert_pem)
    os.replace(staged, creds.server_cert)
    creds.server_key.write_bytes(renewed.key_pem)
    wanted = _der(renewed.cert_pem)
    assert wait_until(lambda: all(_served_cert(gateway) == wanted for _ in range(8)), 20)
    assert gateway.get("/healthz")[0] == 200
    assert "TLS certificate re-read" in gateway.log_text()
    assert gateway.proc is not None and gateway.proc.pid == pid and gateway.running


def test_a_renewed_certificate_is_served_without_a_signal(
    gateway: SecureGateway, creds: Credentials
) -> None:
    _renewal_without_a_signal(gateway, creds)  # gevent, the default worker: one context each


def test_gthread_workers_follow_the_certificate_files_too(
    creds: Credentials, tmp_path: Path
) -> None:
    """gthread asks for a context at every connection: it gets the worker's one, checked."""
    config = GatewayConfig(store=f"sqlite:{tmp_path / 'telemetry.db'}")
    with open_store(config.store) as store:
        store.write(data.seed())
    gw = SecureGateway(config, creds, tmp_path / "gateway.log", "--worker-class=gthread")
    try:
        _renewal_without_a_signal(gw, creds)
    finally:
        gw.terminate(15)


def test_sighup_serves_a_renewed_certificate_without_restart(
    gateway: SecureGateway, creds: Credentials
) -> None:
    """SIGHUP replaces gunicorn's workers with fresh ones, which load the files."""
    pid = gateway.proc.pid if gateway.proc else 0
    renewed = creds.ca.issue("broker", ["127.0.0.1", "localhost"])
    creds.server_cert.write_bytes(renewed.cert_pem)
    creds.server_key.write_bytes(renewed.key_pem)
    wanted = _der(renewed.cert_pem)
    assert gateway.proc is not None
    gateway.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: _served_cert(gateway) == wanted, 30)
    assert gateway.get("/healthz")[0] == 200
    assert gateway.proc is not None and gateway.proc.pid == pid and gateway.running

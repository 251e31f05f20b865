"""The chart's trust wiring: auth and TLS on by default, each pod mounts only its own
credential, least-privilege generated tokens, and those credentials work on a real broker."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml
from cryptography import x509

from proto.gen import walbroker_pb2 as pb
from tests.chart.conftest import Chart
from tests.fixtures.broker import free_port
from walbroker.tokens import parse

CLIENTS = {"streamer": {"gputel-streamer-token"}, "collector": {"gputel-collector-token"}}
# The gateway's token file, and its own read token for the web view's broker relay.
SERVERS = {
    "broker": {"gputel-broker-auth"},
    "gateway": {"gputel-gateway-auth", "gputel-gateway-token"},
}


def secret_data(r, name: str) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in r.get("Secret", name)["data"].items()}


def pod_of(r, kind: str, component: str) -> dict:
    return r.get(kind, f"gputel-{component}")["spec"]["template"]["spec"]


def secret_volumes(pod: dict) -> dict[str, dict]:
    return {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}


def test_broker_and_gateway_run_with_auth_and_tls_by_default(chart: Chart) -> None:
    r = chart.render("default")
    broker = pod_of(r, "StatefulSet", "broker")["containers"][0]["args"]
    gateway = pod_of(r, "Deployment", "gateway")["containers"][0]["args"]
    for args in (broker, gateway):
        assert "--auth-tokens=/var/run/gputel/auth/tokens" in args
        assert "--tls-cert=/var/run/gputel/tls/tls.crt" in args
        assert "--insecure" not in args
    probe = pod_of(r, "Deployment", "gateway")["containers"][0]["readinessProbe"]["httpGet"]
    assert probe["scheme"] == "HTTPS"
    monitor = r.get("ServiceMonitor", "gputel-gateway")["spec"]["endpoints"][0]
    assert monitor["scheme"] == "https" and monitor["tlsConfig"]["ca"]["secret"]["key"] == "ca.crt"


def test_each_pod_mounts_only_its_own_credential(chart: Chart) -> None:
    r = chart.render("default")
    mounted: dict[str, set[str]] = {}
    for kind, component in [("StatefulSet", "broker"), ("Deployment", "streamer"),
                            ("Deployment", "collector"), ("Deployment", "gateway")]:  # fmt: skip
        pod = pod_of(r, kind, component)
        volumes = secret_volumes(pod)
        mounted[component] = {v["secretName"] for v in volumes.values()} - {"gputel-tls"}
        tls_keys = {i["key"] for i in volumes["tls"]["items"]}
        if component == "broker":
            assert tls_keys == {"tls.crt", "tls.key"}, component
        elif component == "gateway":  # serves TLS and reads the broker's Admin API over TLS
            assert tls_keys == {"tls.crt", "tls.key", "ca.crt"}, component
        else:
            assert tls_keys == {"ca.crt"}, component  # a client never holds the server's key
            env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
            assert env["GPUTEL_BROKER_TOKEN_FILE"] == "/var/run/gputel/auth/token"
            assert env["GPUTEL_BROKER_TLS_CA"] == "/var/run/gputel/tls/ca.crt"
    assert mounted == {**CLIENTS, **SERVERS}
    for component in ("streamer", "collector", "broker", "gateway"):
        (container,) = pod_of(r, "StatefulSet" if component == "broker" else "Deployment",
                              component)["containers"]  # fmt: skip
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["credential"]["readOnly"] and "subPath" not in mounts["credential"]


def test_generated_tokens_have_least_privilege(chart: Chart) -> None:
    r = chart.render("default")
    table = parse(secret_data(r, "gputel-broker-auth")["tokens"])
    assert all(t.startswith("sha256:") for t in table.by_hash)
    streamer = table.for_token(secret_data(r, "gputel-streamer-token")["token"])
    collector = table.for_token(secret_data(r, "gputel-collector-token")["token"])
    admin = table.for_token(secret_data(r, "gputel-admin-token")["token"])
    assert streamer and collector and admin
    assert streamer.roles == {"produce", "read"} and collector.roles == {"consume", "produce"}
    assert collector.allows(["consume"], "group", "collectors")
    assert not collector.allows(["consume"], "group", "streamers")
    assert not collector.allows(["produce"], "topic", "telemetry")
    assert collector.allows(["produce"], "topic", "telemetry.dlq")
    assert not streamer.allows(["consume"], "topic", "telemetry")
    assert admin.roles == {"admin"}
    gateway = table.for_token(secret_data(r, "gputel-gateway-token")["token"])
    assert gateway and gateway.roles == {"read"}  # the web view's relay: read calls only
    api = parse(secret_data(r, "gputel-gateway-auth")["tokens"])
    assert api.for_token(secret_data(r, "gputel-api-token")["token"]).roles == {"read"}
    # The tokens themselves appear only in their own Secret.
    for name in ("gputel-streamer-token", "gputel-collector-token", "gputel-admin-token"):
        token = secret_data(r, name)["token"]
        assert r.text.count(base64.b64encode(token.encode()).decode()) == 1


def test_generated_certificate_names_the_services(chart: Chart) -> None:
    r = chart.render("default")
    tls = secret_data(r, "gputel-tls")
    cert = x509.load_pem_x509_certificate(tls["tls.crt"].encode())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(names.get_values_for_type(x509.DNSName))
    assert {"gputel-broker", "gputel-broker.gputel.svc", "gputel-gateway"} <= dns


def test_the_rendered_credentials_work_on_a_real_broker(chart: Chart, tmp_path: Path) -> None:
    """The broker's token file, certificate and the streamer's token exactly as rendered."""
    r = chart.render("default")
    files = {
        **secret_data(r, "gputel-tls"),
        "tokens": secret_data(r, "gputel-broker-auth")["tokens"],
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "walbroker.cli", "serve", "--data-dir", str(tmp_path / "d"),
         "--listen", f"127.0.0.1:{port}", "--metrics-listen", "",
         "--auth-tokens", str(tmp_path / "tokens"), "--tls-cert", str(tmp_path / "tls.crt"),
         "--tls-key", str(tmp_path / "tls.key")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        creds = grpc.ssl_channel_credentials(files["ca.crt"].encode())
        options = [("grpc.ssl_target_name_override", "gputel-broker")]
        with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=options) as ch:
            call = ch.unary_unary(
                "/walbroker.v1.Broker/Metadata",
                request_serializer=pb.MetadataRequest.SerializeToString,
                response_deserializer=pb.MetadataResponse.FromString,
            )
            grpc.channel_ready_future(ch).result(timeout=30)
            token = secret_data(r, "gputel-streamer-token")["token"]
            resp = call(pb.MetadataRequest(), metadata=[("authorization", f"Bearer {token}")],
                        timeout=10)  # fmt: skip
            assert resp.default_partitions == 16
            with pytest.raises(grpc.RpcError) as err:
                call(pb.MetadataRequest(), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        proc.terminate()
        proc.wait(20)


def test_existing_secrets_and_cert_manager(chart: Chart) -> None:
    proc = chart.template(
        sets=["auth.existingSecret=gputel-creds", "tls.certManager.issuerRef.name=ca-issuer"],
        extra=["--set", "tls.certManager.enabled=true"],
    )
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert not [d for d in docs if d["kind"] == "Secret"]
    (cert,) = [d for d in docs if d["kind"] == "Certificate"]
    assert cert["spec"]["secretName"] == "gputel-tls"
    assert cert["spec"]["issuerRef"]["name"] == "ca-issuer"
    assert "gputel-broker" in cert["spec"]["dnsNames"]
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    keys = {
        d["metadata"]["name"]: secret_volumes(d["spec"]["template"]["spec"])["credential"]
        for d in workloads
    }
    assert {name: v["items"][0]["key"] for name, v in keys.items()} == {  # each its own key
        "gputel-broker": "broker-tokens",
        "gputel-gateway": "gateway-tokens",
        "gputel-streamer": "streamer.token",
        "gputel-collector": "collector.token",
    }
    assert {v["secretName"] for v in keys.values()} == {"gputel-creds"}
    gateway = next(d for d in workloads if d["metadata"]["name"] == "gputel-gateway")
    relay = secret_volumes(gateway["spec"]["template"]["spec"])["broker-credential"]
    assert relay["secretName"] == "gputel-creds" and relay["items"][0]["key"] == "gateway.token"
    missing = chart.template(extra=["--set", "tls.certManager.enabled=true"])
    assert missing.returncode != 0 and "issuerRef.name is required" in missing.stderr


def test_turning_auth_or_tls_off_is_explicitly_insecure(chart: Chart) -> None:
    for off in ("auth.enabled=false", "tls.enabled=false"):
        proc = chart.template(extra=["--set", off])
        assert proc.returncode == 0, proc.stderr
        docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(proc.stdout) if d}
        sts = docs[("StatefulSet", "gputel-broker")]
        args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--insecure" in args, off


def test_admin_job_mounts_the_admin_token_and_may_reach_the_broker(chart: Chart) -> None:
    args = "admin.job.args={describe-group,collectors}"
    proc = chart.template(extra=["--set", "admin.job.enabled=true", "--set", args])
    assert proc.returncode == 0, proc.stderr
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(proc.stdout) if d}
    job = docs[("Job", "gputel-admin")]["spec"]["template"]["spec"]
    assert job["containers"][0]["args"][-2:] == ["describe-group", "collectors"]
    assert secret_volumes(job)["credential"]["secretName"] == "gputel-admin-token"
    assert ("NetworkPolicy", "gputel-admin") in docs

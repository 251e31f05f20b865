"""TLS and mutual TLS on a real broker process, with certificates made in the test.

Also: a plaintext client against a TLS broker gets a clear error quickly (not a hang), and
a renewed certificate is served to new connections without a restart.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gputel.pki import CertificateAuthority, write_private
from tests.fixtures.broker import BrokerProcess
from tests.fixtures.secure import Credentials
from tests.support import wait_until
from tests.walbroker.helpers import decode, encode
from walbroker.client import channel, metadata
from walbroker.consumer import Consumer
from walbroker.credentials import ClientSecurity
from walbroker.errors import TlsMismatch, Unauthenticated, Unavailable
from walbroker.producer import Producer


@pytest.fixture
def creds(tmp_path: Path) -> Credentials:
    c = Credentials(tmp_path / "creds")
    c.add("streamer", "produce")
    c.add("collector", "consume")
    c.add("ops", "read,admin")
    return c


def roundtrip(
    address: str, producer: ClientSecurity, consumer: ClientSecurity, n: int = 50
) -> None:
    """Publish n items and consume exactly them back."""
    with Producer(address, "telemetry", encode, security=producer) as p:
        for i in range(n):
            p.send(f"gpu-{i % 5}", i)
        p.flush(20)
    c = Consumer(address, "collectors", "telemetry", security=consumer).start()
    got: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            for m in c.poll(0.5):
                got.extend(decode(m))
            c.commit()
    finally:
        c.close()
    assert sorted(got) == list(range(n))


def test_tls_with_tokens(creds: Credentials, broker_factory: Callable[..., BrokerProcess]) -> None:
    b = broker_factory(
        "--auto-create-topics", *creds.broker_args(), credentials=creds.channel_credentials()
    ).start()
    roundtrip(b.address, creds.client("streamer"), creds.client("collector"))
    out = subprocess.run(
        [sys.executable, "-m", "walbroker.cli", "admin", "--broker", b.address,
         "--tls-ca", str(creds.ca_file), "--token-file", str(creds.token_path("ops")),
         "describe-group", "collectors"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "collectors" in out.stdout and creds.tokens["ops"] not in out.stdout + out.stderr


def test_plaintext_client_against_tls_broker_gets_a_clear_error(
    creds: Credentials, broker_factory: Callable[..., BrokerProcess]
) -> None:
    b = broker_factory(
        "--auto-create-topics", *creds.broker_args(), credentials=creds.channel_credentials()
    ).start()
    started = time.monotonic()
    with pytest.raises(TlsMismatch, match="speaks TLS"):
        Producer(
            b.address, "telemetry", encode, security=creds.client("streamer", tls=False)
        ).start(timeout_s=30)
    assert time.monotonic() - started < 10, "the mismatch must be reported, not retried"
    c = Consumer(b.address, "collectors", "telemetry",
                 security=creds.client("collector", tls=False)).start()  # fmt: skip
    try:
        with pytest.raises(TlsMismatch):
            c.wait_for_assignment(10)
    finally:
        c.close()
    out = subprocess.run(
        [sys.executable, "-m", "walbroker.cli", "admin", "--broker", b.address, "groups"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 4
    assert "speaks TLS" in out.stderr and "--tls-ca" in out.stderr


def test_tls_client_against_plaintext_broker_fails_fast(
    creds: Credentials, broker_factory: Callable[..., BrokerProcess]
) -> None:
    b = broker_factory("--auto-create-topics", *creds.broker_args(tls=False)).start()
    with channel(b.address, creds.client("ops")) as ch, pytest.raises(Unavailable):
        metadata(ch, timeout_s=5)


def test_mutual_tls(creds: Credentials, broker_factory: Callable[..., BrokerProcess]) -> None:
    creds.add_cert("cert-streamer", "produce", "topic=telemetry")
    creds.add_cert("cert-collector", "consume", "group=collectors")
    b = broker_factory("--auto-create-topics", *creds.broker_args(mtls=True), credentials=None)
    b.start(wait=False)
    # The certificate names the principal when no token is sent.
    assert wait_until(lambda: _reachable(b.address, creds.client(None, cert="cert-streamer")), 20)
    roundtrip(
        b.address,
        creds.client(None, cert="cert-streamer"),
        creds.client(None, cert="cert-collector"),
    )
    # A token still wins over the certificate.
    roundtrip(
        b.address, creds.client("streamer", cert="x-1"), creds.client("collector", cert="x-2")
    )
    # A verified certificate whose name is not in the token file: UNAUTHENTICATED.
    stranger = creds.client(None, cert="stranger")
    with channel(b.address, stranger) as ch, pytest.raises(Unauthenticated):
        metadata(ch)
    # No client certificate at all: the handshake fails.
    with channel(b.address, creds.client("streamer")) as ch, pytest.raises(Unavailable):
        metadata(ch, timeout_s=5)
    # ... and `walbroker admin` says what is missing.
    admin = subprocess.run(
        [sys.executable, "-m", "walbroker.cli", "admin", "--broker", b.address,
         "--token-file", str(creds.token_path("ops")), "--tls-ca", str(creds.ca_file), "groups"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert admin.returncode == 4, admin.stderr
    assert "give --tls-cert and --tls-key" in admin.stderr
    # A certificate from another CA: the handshake fails too.
    other = CertificateAuthority("other CA").issue("cert-streamer", client=True)
    cert = creds.root / "other.crt"
    cert.write_bytes(other.cert_pem)
    key = write_private(creds.root / "other.key", other.key_pem)
    rogue = ClientSecurity(tls_ca=creds.ca_file, tls_cert=cert, tls_key=key)
    with channel(b.address, rogue) as ch, pytest.raises(Unavailable):
        metadata(ch, timeout_s=5)


def _reachable(address: str, sec: ClientSecurity) -> bool:
    with channel(address, sec) as ch:
        try:
            metadata(ch, timeout_s=2)
            return True
        except Unavailable:
            return False


def test_renewed_certificate_is_served_without_restart(
    creds: Credentials, broker_factory: Callable[..., BrokerProcess]
) -> None:
    b = broker_factory(
        "--auto-create-topics", *creds.broker_args(), credentials=creds.channel_credentials()
    ).start()
    pid = b.proc.pid if b.proc else 0
    assert _reachable(b.address, creds.client("ops"))
    # Renewal by a new CA: clients that trust only the new CA connect once the files change.
    new_ca = CertificateAuthority("renewed CA")
    renewed = new_ca.issue("broker", ["127.0.0.1"])
    new_ca_file = creds.root / "new-ca.pem"
    new_ca_file.write_bytes(new_ca.cert_pem)
    trusting_new = ClientSecurity(token_file=creds.token_path("ops"), tls_ca=new_ca_file)
    assert not _reachable(b.address, trusting_new)
    write_private(creds.server_key, renewed.key_pem)
    creds.server_cert.write_bytes(renewed.cert_pem)
    assert wait_until(lambda: _reachable(b.address, trusting_new), 20)
    with contextlib.suppress(Exception):
        assert not _reachable(b.address, creds.client("ops"))
    assert b.proc is not None and b.proc.pid == pid and b.running
    assert "TLS certificate re-read" in b.log_text()


def test_half_given_tls_flags_are_refused(creds: Credentials, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "walbroker.cli", "serve", "--data-dir", str(tmp_path / "d"),
         "--listen", "127.0.0.1:0", "--metrics-listen", "", "--tls-cert", str(creds.server_cert)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1 and "--tls-cert and --tls-key go together" in out.stderr

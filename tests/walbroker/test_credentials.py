"""Units of the TLS and client-credential plumbing (the integration is in test_tls/test_auth)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from tests.fixtures.broker import free_port
from tests.fixtures.secure import Credentials
from walbroker.credentials import (
    BearerToken,
    ClientSecurity,
    TokenSource,
    add_client_security_args,
    client_security_from_args,
)
from walbroker.tls import ServerCertificates, channel_credentials, speaks_tls


def test_server_certificates_are_reread_only_when_changed_and_only_when_usable(
    tmp_path: Path,
) -> None:
    creds = Credentials(tmp_path)
    certs = ServerCertificates(creds.server_cert, creds.server_key, creds.ca_file)
    assert certs.fetch() is None  # unchanged
    creds.server_cert.write_text("half a certificate")
    assert certs.fetch() is None and certs.loaded == 1  # unusable: the old one stays
    creds.issue("broker", ["127.0.0.1"])  # a renewal: same paths, new files
    assert certs.fetch() is not None and certs.loaded == 2
    assert certs.fetch() is None
    with pytest.raises(ValueError, match="not a PEM"):
        ServerCertificates(creds.ca_file, creds.ca_file)


def test_client_tls_needs_cert_and_key_together(tmp_path: Path) -> None:
    creds = Credentials(tmp_path)
    with pytest.raises(ValueError, match="both"):
        channel_credentials(creds.ca_file, creds.server_cert, None)
    with pytest.raises(ValueError, match="go together"):
        ClientSecurity.build(tls_cert=str(creds.server_cert))
    with pytest.raises(ValueError, match="no such file"):
        ClientSecurity.build(tls_ca=str(tmp_path / "missing.pem"))


def test_nothing_listening_is_not_tls() -> None:
    assert not speaks_tls(f"127.0.0.1:{free_port()}", timeout_s=1)


def test_flags_fall_back_to_the_environment(tmp_path: Path) -> None:
    token = tmp_path / "t"
    token.write_text("gpt_abc\n")
    env = {"GPUTEL_BROKER_TOKEN_FILE": str(token)}
    p = argparse.ArgumentParser()
    add_client_security_args(p, env)
    assert client_security_from_args(p.parse_args([]), env).token_file == token
    assert ClientSecurity.from_env(env).token_file == token
    suppressed = argparse.ArgumentParser()
    add_client_security_args(suppressed, env, suppress=True)
    assert client_security_from_args(suppressed.parse_args([]), env).token_file == token


def test_token_source_follows_the_file_and_keeps_the_last_good_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("gpt_one\n")
    source = TokenSource(path)
    bearer = BearerToken(source)
    assert source.token() == "gpt_one" and bearer.rotated()  # nothing sent yet
    bearer.sent = "gpt_one"
    assert not bearer.rotated()
    path.write_text("gpt_two\n")
    assert bearer.rotated() and source.token() == "gpt_two"
    os.remove(path)
    assert source.token() == "gpt_two"  # gone for a moment (a Secret being updated)
    path.write_text("")
    assert source.token() == "gpt_two"  # empty for a moment (being rewritten)
    path.write_text("gpt_three")
    assert source.token() == "gpt_three"
    with pytest.raises(ValueError, match="token file"):
        TokenSource(tmp_path / "never")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        TokenSource(tmp_path / "empty")

"""--kafka-config files: parsing, secret references, and the refusal of shared literal secrets."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from gputel.transport.kafka_config import (
    MAX_FILE_BYTES,
    KafkaConfigError,
    is_secret,
    load_properties,
    redacted,
)


def _write(tmp_path: Path, text: str, mode: int = 0o600, name: str = "client.properties") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


def test_reads_key_value_lines_and_skips_comments_and_blanks(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "# a comment\n! another\n\n  security.protocol = SASL_SSL  \r\n"
        "sasl.mechanism=SCRAM-SHA-512\nclient.id=a=b\nssl.endpoint.identification.algorithm=\n",
    )
    assert load_properties(path, env={}) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "client.id": "a=b",  # only the first `=` separates
        "ssl.endpoint.identification.algorithm": "",
    }


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("security.protocol SASL_SSL\n", r":1: expected key=value"),
        ("ok=1\n=value\n", r":2: expected key=value"),
        ("bad key=1\n", r":1: expected key=value"),
        ("a=1\n# x\na=2\n", r":3: a is already set on line 1"),
    ],
)
def test_malformed_lines_are_refused_with_their_line(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(KafkaConfigError, match=error):
        load_properties(_write(tmp_path, text), env={})


def test_env_and_file_references_are_resolved(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret-from-file\n")  # a Secret mounted as a file ends with a newline
    path = _write(
        tmp_path,
        f"sasl.username=${{env:KAFKA_USER}}\nsasl.password=${{file:{secret}}}\n"
        "sasl.oauthbearer.config=principal=${env:KAFKA_USER} extra=1\n",
        mode=0o644,  # references only: a readable file holds no secret
    )
    props = load_properties(path, env={"KAFKA_USER": "gputel"})
    assert props == {
        "sasl.username": "gputel",
        "sasl.password": "s3cret-from-file",
        "sasl.oauthbearer.config": "principal=gputel extra=1",
    }


def test_env_defaults_to_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUTEL_TEST_KAFKA_PASSWORD", "pw")
    path = _write(tmp_path, "sasl.password=${env:GPUTEL_TEST_KAFKA_PASSWORD}\n")
    assert load_properties(path) == {"sasl.password": "pw"}


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("${env:NOPE_NOT_SET}", "environment variable NOPE_NOT_SET is not set"),
        ("${env:}", r"environment variable \(empty\) is not set"),
        ("${file:relative/path}", "must be an absolute path"),
        ("${file:/nonexistent/gputel/secret}", "cannot read /nonexistent/gputel/secret"),
        ("${vault:kv/x}", "unknown reference"),
        ("${NOPE}", "unknown reference"),
    ],
)
def test_bad_references_are_refused(tmp_path: Path, value: str, error: str) -> None:
    path = _write(tmp_path, f"sasl.password={value}\n")
    with pytest.raises(KafkaConfigError, match=error) as info:
        load_properties(path, env={})
    assert "sasl.password" in str(info.value)


def test_a_file_reference_is_bounded_and_must_be_text(tmp_path: Path) -> None:
    big, binary = tmp_path / "big", tmp_path / "binary"
    big.write_bytes(b"x" * (MAX_FILE_BYTES + 1))
    binary.write_bytes(b"\xff\xfe\x00")
    for ref, error in ((big, "larger than"), (binary, "not UTF-8")):
        path = _write(tmp_path, f"ssl.key.pem=${{file:{ref}}}\n")
        with pytest.raises(KafkaConfigError, match=error):
            load_properties(path, env={})


@pytest.mark.parametrize("mode", [0o604, 0o644, 0o666])
def test_a_literal_secret_in_a_world_readable_file_is_refused(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path, "security.protocol=SASL_SSL\nsasl.password=hunter2\n", mode=mode)
    with pytest.raises(KafkaConfigError) as info:
        load_properties(path, env={})
    message = str(info.value)
    assert ":2: sasl.password is a literal secret in a file that others may read" in message
    assert f"chmod 600 {path}" in message and "${file:" in message
    assert "hunter2" not in message  # the refusal never echoes the secret


@pytest.mark.parametrize("mode", [0o640, 0o440, 0o660])
def test_a_literal_secret_in_a_group_readable_file_is_loaded_with_a_warning(
    tmp_path: Path, mode: int, caplog: pytest.LogCaptureFixture
) -> None:
    # A Secret volume in a pod with an fsGroup: kubelet makes it group-readable.
    path = _write(tmp_path, "sasl.password=hunter2\n", mode=mode)
    with caplog.at_level(logging.WARNING, logger="gputel.transport.kafka_config"):
        assert load_properties(path, env={}) == {"sasl.password": "hunter2"}
    (record,) = caplog.records
    assert record.getMessage() == "kafka-config: literal secret in a group-readable file"
    assert record.key == "sasl.password" and record.line == 1  # type: ignore[attr-defined]
    assert "hunter2" not in caplog.text


def test_a_literal_secret_in_a_private_file_is_accepted(tmp_path: Path) -> None:
    path = _write(tmp_path, "ssl.key.password=hunter2\n", mode=0o600)
    assert load_properties(path, env={}) == {"ssl.key.password": "hunter2"}
    os.chmod(path, 0o400)
    assert load_properties(path, env={}) == {"ssl.key.password": "hunter2"}


def test_a_shared_file_without_secrets_is_accepted(tmp_path: Path) -> None:
    path = _write(tmp_path, "security.protocol=SSL\nssl.ca.location=/etc/ca.crt\n", mode=0o644)
    assert load_properties(path, env={})["ssl.ca.location"] == "/etc/ca.crt"


def test_unreadable_or_missing_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KafkaConfigError, match="cannot read it"):
        load_properties(tmp_path / "missing.properties", env={})
    bad = tmp_path / "latin1.properties"
    bad.write_bytes(b"client.id=caf\xe9\n")
    with pytest.raises(KafkaConfigError, match="cannot read it"):
        load_properties(bad, env={})


def test_secret_keys_are_recognised_and_redacted() -> None:
    assert is_secret("sasl.password") and is_secret("ssl.key.pem")
    assert is_secret("sasl.oauthbearer.client.secret") and is_secret("some.future.password")
    assert not is_secret("sasl.username") and not is_secret("ssl.ca.location")
    props = {"sasl.username": "u", "sasl.password": "p", "ssl.key.pem": "k"}
    assert redacted(props) == {"sasl.username": "u", "sasl.password": "***", "ssl.key.pem": "***"}

"""`gputel-streamer` against a broker with tokens and TLS: wrong credentials end the process
with a clear error instead of retrying forever; a missing token file is a usage error."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.broker import BrokerProcess
from tests.fixtures.secure import Credentials
from tests.streamer.dcgm_fixture import csv_text, row
from tests.streamer.streaming import STREAMER


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--tls-ca"], "UNAUTHENTICATED"),  # TLS but no token
        ([], "speaks TLS"),  # plaintext against TLS
        (["--tls-ca", "--token-file:reader"], "PERMISSION_DENIED"),  # a read-only token
    ],
)
def test_wrong_credentials_exit_with_a_clear_error(
    tmp_path: Path,
    broker_factory: Callable[..., BrokerProcess],
    flags: list[str],
    expected: str,
) -> None:
    creds = Credentials(tmp_path / "creds")
    creds.add("reader", "read")
    b = broker_factory(
        "--topic", "telemetry:4", *creds.broker_args(), credentials=creds.channel_credentials()
    ).start()
    csv = tmp_path / "dcgm.csv"
    csv.write_text(csv_text([row()]), encoding="utf-8")
    args = [STREAMER, "--broker", b.address, "--csv", str(csv), "--metrics-listen", ""]
    for flag in flags:
        if flag == "--tls-ca":
            args += [flag, str(creds.ca_file)]
        else:
            args += ["--token-file", str(creds.token_path(flag.split(":")[1]))]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert expected in out.stderr
    assert creds.tokens["reader"] not in out.stderr


def test_missing_token_file_is_a_usage_error(tmp_path: Path) -> None:
    args = [STREAMER, "--broker", "127.0.0.1:1", "--csv", str(tmp_path / "x.csv"),
            "--token-file", str(tmp_path / "nope.token")]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "nope.token: no such file" in out.stderr

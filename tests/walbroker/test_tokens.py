"""The token file format: parsing, refusals with the line number, scopes, reloading."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from walbroker.tokens import (
    TokenFile,
    TokenFileError,
    hash_token,
    new_token,
    parse,
    token_line,
)

H = "sha256:" + "a" * 64


def test_a_line_names_a_principal_with_roles_and_scopes() -> None:
    table = parse(f"# comment\n\ncollector consume,produce {H} consume:group=coll* topic=t  # x\n")
    p = table.by_hash[H]
    assert p.name == "collector" and p.roles == {"consume", "produce"}
    assert p.allows(["consume"], "group", "collectors")
    assert not p.allows(["consume"], "group", "other")
    assert p.allows(["produce"], "group", "anything")  # no group scope for produce
    assert p.allows(["produce"], "topic", "t") and not p.allows(["produce"], "topic", "u")
    assert not p.allows(["admin"], "topic", "t")  # a role it does not hold


def test_role_prefixed_scopes_replace_the_common_ones() -> None:
    p = parse(f"c consume,produce {H} topic=telemetry produce:topic=telemetry.dlq").by_hash[H]
    assert p.allows(["consume"], "topic", "telemetry")
    assert not p.allows(["produce"], "topic", "telemetry")
    assert p.allows(["produce"], "topic", "telemetry.dlq")


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("only-two fields", "expected"),
        (f"bad/name read {H}", "invalid principal"),
        (f"x reed {H}", "unknown role"),
        ("x read sha256:abc", "credential must be"),
        (f"x read {hash_token('t').upper()}", "credential must be"),
        (f"x read {H} topics=x", "invalid scope"),
        (f"x read {H} admin:topic=x", "does not grant"),
    ],
)
def test_bad_lines_are_refused_with_their_line_number(line: str, why: str) -> None:
    with pytest.raises(TokenFileError, match=f"f:2: .*{why}"):
        parse(f"# ok\n{line}\n", "f")


def test_a_hash_may_appear_once_and_cert_lines_name_certificates() -> None:
    with pytest.raises(TokenFileError, match="twice"):
        parse(f"a read {H}\nb read {H}\n")
    table = parse("svc produce cert topic=t\n")
    assert table.for_certificate("svc") is not None and table.for_certificate("x") is None


def test_tokens_are_checked_by_their_hash() -> None:
    token = new_token()
    line = token_line("ops", ["admin"], token)
    assert token not in line and hash_token(token) in line
    table = parse(line)
    assert table.for_token(token) is not None and table.for_token(token + "x") is None


def test_token_file_reloads_on_change_and_keeps_the_last_good_one(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    a, b = new_token(), new_token()
    path.write_text(token_line("a", ["read"], a) + "\n")
    f = TokenFile(path, check_s=0)
    assert f.current().for_token(a) is not None
    path.write_text(token_line("b", ["read"], b) + "\n")
    assert f.current().for_token(b) is not None and f.current().for_token(a) is None
    generation = f.generation
    path.write_text("garbage line here\n" * 3)
    assert f.current().for_token(b) is not None  # a broken file keeps the last good table
    assert f.generation == generation and not f.reload()
    os.remove(path)
    assert f.current().for_token(b) is not None and not f.reload()
    with pytest.raises(TokenFileError, match="No such file"):
        TokenFile(path)


def test_token_new_prints_the_token_once_and_its_line(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "walbroker.cli", "token", "new", "--principal", "collector",
           "--roles", "consume", "--scope", "group=collectors"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout
    token, line = (ln for ln in out.splitlines() if not ln.startswith("#"))
    assert parse(line).for_token(token) is not None
    saved = tmp_path / "t"
    out = subprocess.run([*cmd, "--out", str(saved)], capture_output=True, text=True,
                         timeout=30, check=True).stdout  # fmt: skip
    assert saved.read_text().strip() not in out
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    bad = subprocess.run([*cmd[:-4], "--roles", "root"], capture_output=True, text=True,
                         timeout=30)  # fmt: skip
    assert bad.returncode == 2 and "unknown role" in bad.stderr

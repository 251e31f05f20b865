"""`make helm-install` keeps the InfluxDB password and token off every command line.

make echoes each recipe line and every process's argv is readable in /proc: the recipe must put
the secrets from the environment into a Secret through files, and give helm only its name. Run
with stand-ins for kubectl and helm that record their argv and the files they were given.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.chart.conftest import REPO

PASSWORD = "TEST-ONLY-pw-$(id)-'quoted'"
TOKEN = "TEST-ONLY-tok-Zq81xVb3=="

FAKE = """#!/bin/sh
printf '%s\\n' "$*" >> "$LOG/argv"
for a in "$@"; do
  case "$a" in
    --from-file=*)
      d="${a#--from-file=}"; echo "$d" >> "$LOG/dirs"
      for f in "$d"/*; do printf '%s=%s\\n' "${f##*/}" "$(cat "$f")" >> "$LOG/files"; done
      ls -ld "$d" >> "$LOG/modes";;
  esac
done
[ -t 0 ] || cat > /dev/null
"""


def make_helm_install(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[str, Path]:
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    log = tmp_path / "log"
    log.mkdir(parents=True)
    fake = tmp_path / "fake-tool"
    fake.write_text(FAKE)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    proc = subprocess.run(
        ["make", "-C", str(REPO), "helm-install", f"KUBECTL={fake}", f"HELM={fake}", *args],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LOG": str(log), **env},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr, log


def assert_nothing_leaked(output: str, log: Path, *secrets: str) -> None:
    argv = (log / "argv").read_text()
    for secret in secrets:
        assert secret not in output, "make echoed a secret"
        assert secret not in argv, "a secret was on a command line"
    for d in (log / "dirs").read_text().split():
        assert not Path(d).exists(), f"{d} left behind"
    assert (log / "modes").read_text().startswith("drwx------")


def test_subchart_admin_password_and_token_go_into_a_secret(tmp_path: Path) -> None:
    env = {"INFLUX_PASSWORD": PASSWORD, "INFLUX_TOKEN": TOKEN}
    output, log = make_helm_install(tmp_path, env, "ENABLE_INFLUXDB=1")
    assert_nothing_leaked(output, log, PASSWORD, TOKEN)
    files = (log / "files").read_text().splitlines()
    assert sorted(files) == [f"admin-password={PASSWORD}", f"admin-token={TOKEN}"]
    argv = (log / "argv").read_text()
    assert "create secret generic gputel-influxdb2-admin" in argv
    helm = next(line for line in argv.splitlines() if line.startswith("upgrade --install"))
    assert "influxdb2.adminUser.existingSecret=gputel-influxdb2-admin" in helm
    assert "adminUser.password" not in helm and "adminUser.token" not in helm


def test_a_missing_admin_secret_is_generated(tmp_path: Path) -> None:
    output, log = make_helm_install(tmp_path, {"INFLUX_TOKEN": TOKEN}, "ENABLE_INFLUXDB=1")
    assert_nothing_leaked(output, log, TOKEN)
    files = dict(line.split("=", 1) for line in (log / "files").read_text().splitlines())
    assert files["admin-token"] == TOKEN and len(files["admin-password"]) >= 20


def test_external_influx_token_goes_into_a_secret(tmp_path: Path) -> None:
    args = ("INFLUX_URL=https://influx.example:8086",)
    output, log = make_helm_install(tmp_path, {"INFLUX_TOKEN": TOKEN}, *args)
    assert_nothing_leaked(output, log, TOKEN)
    assert (log / "files").read_text().splitlines() == [f"token={TOKEN}"]
    helm = next(line for line in (log / "argv").read_text().splitlines() if "--install" in line)
    assert "influx.auth.existingSecret=gputel-influx-credentials" in helm
    assert "influx.auth.token" not in helm


def test_no_secret_given_makes_no_secret(tmp_path: Path) -> None:
    output, log = make_helm_install(tmp_path, {}, "ENABLE_INFLUXDB=1")
    argv = (log / "argv").read_text()
    assert "create secret" not in argv and "existingSecret" not in argv
    output, log = make_helm_install(
        tmp_path / "ext", {"INFLUX_TOKEN": TOKEN}, "INFLUX_URL=http://i:8086", "INFLUX_SECRET=mine"
    )
    argv = (log / "argv").read_text()
    assert "create secret" not in argv and "influx.auth.existingSecret=mine" in argv
    assert TOKEN not in argv + output

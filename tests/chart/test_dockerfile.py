"""The Dockerfile: hadolint clean, non-root, exec-form entrypoint, every package and the CSV in."""

from __future__ import annotations

import json
import re
import tomllib

from tests.chart.conftest import REPO, find_tool, run

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_is_clean() -> None:
    proc = run([find_tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_multi_stage_non_root_exec_form_entrypoint() -> None:
    ins = instructions()
    stages = [rest for word, rest in ins if word == "FROM"]
    assert len(stages) >= 2
    final = ins[max(i for i, (w, _) in enumerate(ins) if w == "FROM") :]
    users = [rest for word, rest in final if word == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]), "numeric non-root USER"
    (entrypoint,) = [rest for word, rest in final if word == "ENTRYPOINT"]
    argv = json.loads(entrypoint)
    assert isinstance(argv, list) and argv[0] not in ("sh", "/bin/sh", "bash", "/bin/bash")
    assert ("COPY", "data/dcgm.csv /data/dcgm.csv") in final


def test_every_package_is_copied_and_not_ignored() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    copied = {rest.split()[0].rstrip("/") for word, rest in instructions() if word == "COPY"}
    assert packages <= copied, packages - copied
    ignored = (REPO / ".dockerignore").read_text().split()
    assert not packages & {i.rstrip("/") for i in ignored}
    assert "!data/dcgm.csv" in ignored

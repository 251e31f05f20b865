"""docs/limits.md stays true: every flag it names exists, every broker metric it names is exported.

The tables' "Flag" column names flags (`--max-streams`, or `gputel-gateway --head-timeout-s`
for another program); each must appear in that program's `--help`. The broker table's
"Metric" column names metrics without their `gpu_telemetry_broker_` prefix; each must be
a family on a live broker's /metrics (declared even before its first sample).
"""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "limits.md"
PROGRAMS = {
    "walbroker": ["-m", "walbroker.cli", "serve"],
    "gputel-gateway": ["-m", "gateway.cli"],
    "gputel-collector": ["-m", "collector.cli"],
    "gputel-streamer": ["-m", "streamer.cli"],
}
BROKER_PREFIX = "gpu_telemetry_broker_"


def tables() -> dict[str, list[dict[str, str]]]:
    """Each section's table rows as {column: cell}, keyed by the section heading."""
    out: dict[str, list[dict[str, str]]] = {}
    section, header = "", []
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        if not line.startswith("|"):
            header = []  # a table ends at the first line that is not a row
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not header:
            header = cells
        elif not set(line) <= set("|-: "):
            out.setdefault(section, []).append(dict(zip(header, cells, strict=False)))
    return out


def flags_named() -> set[tuple[str, str]]:
    """(program, flag) for every flag the Flag columns name."""
    named: set[tuple[str, str]] = set()
    for section, rows in tables().items():
        default = "walbroker" if section.startswith("Broker") else ""
        for row in rows:
            for code in re.findall(r"`([^`]+)`", row.get("Flag", "")):
                parts = code.split()
                program = parts[0] if parts[0] in PROGRAMS else default
                for flag in [p for p in parts if p.startswith("--")]:
                    assert program, f"{section}: flag {flag} without a program"
                    named.add((program, flag))
    return named


def broker_metrics_named() -> set[str]:
    names: set[str] = set()
    for section, rows in tables().items():
        if not section.startswith("Broker"):
            continue
        for row in rows:
            for code in re.findall(r"`([^`]+)`", row.get("Metric", "")):
                names.add(BROKER_PREFIX + code.split("{")[0])
            # Counters named in the client's column ("deleted and counted in `…_total`").
            for code in re.findall(r"`([a-z_]+_total)`", row.get("What the client sees", "")):
                names.add(BROKER_PREFIX + code)
    return names


def help_text(program: str) -> str:
    argv = [sys.executable, *PROGRAMS[program], "--help"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_doc_names_flags_and_metrics_at_all():
    # The parser must find what the doc has, or the checks below prove nothing.
    assert ("walbroker", "--max-streams") in flags_named()
    assert ("gputel-gateway", "--head-timeout-s") in flags_named()
    assert f"{BROKER_PREFIX}refused_calls_total" in broker_metrics_named()
    assert len(flags_named()) >= 15 and len(broker_metrics_named()) >= 10


def test_every_flag_named_exists():
    named = flags_named()
    missing = []
    for program in sorted({p for p, _ in named}):
        text = help_text(program)
        for flag in sorted(f for p, f in named if p == program):
            if not re.search(rf"(^|[\s,\[]){re.escape(flag)}([\s,=\]]|$)", text, re.M):
                missing.append(f"{program} {flag}")
    assert not missing, f"docs/limits.md names flags that do not exist: {missing}"


def test_every_broker_metric_named_is_exported(broker_factory):
    broker = broker_factory("--topic", "t:2").start()
    with urllib.request.urlopen(broker.metrics_url, timeout=10) as resp:
        body = resp.read().decode()
    families = set(re.findall(r"^# (?:HELP|TYPE) (\S+)", body, re.M))
    exported = families | {f"{n}_total" for n in families}
    missing = sorted(broker_metrics_named() - exported)
    assert not missing, f"docs/limits.md names metrics the broker does not export: {missing}"

"""Generated protobuf code is never stale: `make proto` output equals what is committed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_proto_gen_matches_the_proto_files(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    subprocess.run(
        ["scripts/gen_proto.sh", str(tmp_path)], cwd=ROOT, env=env, check=True,
        capture_output=True, timeout=120,
    )  # fmt: skip
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*_pb2*")}
    committed = {p.name: p.read_text() for p in (ROOT / "proto" / "gen").glob("*_pb2*")}
    assert "telemetry_pb2.py" in fresh
    stale = sorted(n for n in fresh.keys() | committed.keys() if fresh.get(n) != committed.get(n))
    assert not stale, f"proto/gen is stale, run `make proto`: {stale}"

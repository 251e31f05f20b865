"""The DCGM CSV generator's invariants, and the committed sample it made."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from scripts import gen_dcgm
from streamer.labels import parse_labels
from streamer.source import read_csv

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "dcgm.csv"


def generate(seed: int = 3, hosts: int = 4, passes: int = 3) -> str:
    out = io.StringIO()
    gen_dcgm.write(out, seed, hosts, 8, passes)
    return out.getvalue()


@pytest.fixture(scope="module")
def records() -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(generate())))


def test_every_field_quoted_and_header_as_dcgm_writes_it() -> None:
    lines = generate(hosts=1, passes=1).splitlines()
    assert lines[0].split(",") == [f'"{h}"' for h in gen_dcgm.HEADER]
    field = r'"(?:[^"]|"")*"'
    assert all(re.fullmatch(f"{field}(?:,{field})*", line) for line in lines)
    assert 'DCGM_FI_DRIVER_VERSION=""' in lines[1]  # labels_raw's inner quotes doubled


def test_one_host_misses_one_gpu_and_gpu_ids_repeat_with_distinct_uuids(records) -> None:
    per_host: dict[str, set[str]] = defaultdict(set)
    uuids: dict[str, set[str]] = defaultdict(set)
    for r in records:
        per_host[r["Hostname"]].add(r["gpu_id"])
        uuids[r["gpu_id"]].add(r["uuid"])
    assert sorted(len(g) for g in per_host.values()) == [7, 8, 8, 8]
    assert len(uuids["0"]) >= 3  # gpu 0 exists on (almost) every host, one uuid each
    assert len({r["uuid"] for r in records}) == 31
    assert all(u.startswith("GPU-") and len(u) == 40 for u in {r["uuid"] for r in records})


def test_fb_used_plus_free_is_the_total_and_clocks_are_constant(records) -> None:
    fb: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    clocks: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in records:
        key = (r["uuid"], r["timestamp"])
        if r["metric_name"] in ("DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"):
            fb[key][r["metric_name"]] = int(r["value"])
        if r["metric_name"].endswith("_CLOCK"):
            clocks[(r["uuid"], r["metric_name"])].add(r["value"])
    totals = {
        r["modelName"]: m.fb_total_mib for m in gen_dcgm.MODELS for r in [{"modelName": m.name}]
    }
    model_of = {r["uuid"]: r["modelName"] for r in records}
    for (uuid, _), v in fb.items():
        assert v["DCGM_FI_DEV_FB_USED"] + v["DCGM_FI_DEV_FB_FREE"] == totals[model_of[uuid]]
    assert all(len(values) == 1 for values in clocks.values())


def test_labels_raw_describes_the_row_and_k8s_columns_mostly_empty(records) -> None:
    for r in records:
        labels = parse_labels(r["labels_raw"])
        assert labels["UUID"] == r["uuid"] and labels["__name__"] == r["metric_name"]
        assert labels["gpu"] == r["gpu_id"] and labels.get("pod", "") == r["pod"]
    placed = sum(1 for r in records if r["pod"])
    assert 0 < placed < len(records) / 2


def test_power_is_a_float_and_values_are_plausible(records) -> None:
    for r in records:
        v, metric = float(r["value"]), r["metric_name"]
        if metric == "DCGM_FI_DEV_POWER_USAGE":
            assert "." in r["value"] and 20 < v < 720
        elif metric.endswith("_UTIL"):
            assert 0 <= v <= 100
        elif metric == "DCGM_FI_DEV_GPU_TEMP":
            assert 20 < v < 90


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    assert generate(seed=5) == generate(seed=5)
    assert generate(seed=5) != generate(seed=6)


def test_committed_sample_is_what_the_generator_makes(tmp_path: Path) -> None:
    out = tmp_path / "dcgm.csv"
    gen_dcgm.main(["--hosts", "32", "--passes", "2", "--seed", "7", "--out", str(out)])
    assert out.read_bytes() == SAMPLE.read_bytes()


def test_sample_parses_to_hosts_x_gpus_x_metrics_x_passes_rows_without_rejections() -> None:
    rows = read_csv(SAMPLE)
    gpus = 32 * 8 - 1
    assert len(rows) == rows.report.rows_read == gpus * 10 * 2
    assert not rows.report.rejected and not rows.report.defects
    assert len({g.uuid for g in rows.gpus}) == len(rows.gpus) == gpus
    assert len(rows.metrics) == 10
    assert SAMPLE.stat().st_size < 3_000_000


def test_piped_into_head_it_stops_quietly_and_bad_counts_are_usage_errors() -> None:
    """`gen_dcgm.py --out - | head` ended in a BrokenPipeError traceback; `--hosts 0` in a
    ValueError traceback from deep inside the generator."""
    script = [sys.executable, str(ROOT / "scripts" / "gen_dcgm.py")]
    proc = subprocess.Popen([*script, "--hosts", "64", "--out", "-"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().startswith(b'"timestamp"')
    proc.stdout.close()  # what `head -1` does after its line
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and b"Traceback" not in err, err
    for flag in ("--hosts", "--gpus-per-host", "--passes"):
        done = subprocess.run([*script, flag, "0"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert f"argument {flag}: must be at least 1, not 0" in done.stderr

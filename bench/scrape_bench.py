"""Live scraping: fake dcgm-exporters -> streamer (scrape mode) -> walbroker -> collector -> SQLite.

Two parts:

- `parser`: samples/s of `streamer.exposition.samples` plus the label-text lookup the
  streamer does per sample, on a fake exporter's page (80 samples), one core, best of 5;
  next to `prometheus_client.parser` on the same text.
- `pipeline`: `targets` fake exporter targets (8 GPUs x 10 fields each, served by
  `exporter_procs` `gputel-fake-exporter` processes) scraped every `interval_s` by one
  streamer, through a real broker (fsync on) and one collector into SQLite, with the gateway
  up. After a warm-up, a `duration_s` window: `scrapes_expected` = targets x window /
  interval; `scrapes_stored` = stored points with a time in the window / 80 (read from the
  SQLite file after the collectors caught up); `lost` = expected - stored. Scrape p99 from
  the streamer's `gpu_telemetry_scrape_seconds` histogram over the window; freshness p99 =
  a point's time (its scrape's start) -> first seen through the gateway's telemetry API,
  measured by `bench.e2e_bench.LatencyProbe` on a few GPUs (its poll cycle is the
  resolution). CPU per process as in `e2e_bench`.

`run()` is called by `bench/run.py`; `python -m bench.scrape_bench [targets] [seconds]`.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.e2e_bench import (
    CpuMeter,
    LatencyProbe,
    descendants,
    hist_delta,
    histogram_quantile,
    metrics_url,
    scrape,
    window_latencies,
)
from gputel.fake_exporter import Node
from streamer.exposition import samples
from tests.e2e.pipeline import BIN, Pipeline, wait_for
from tests.fixtures.broker import BrokerProcess
from tests.fixtures.process import ManagedProcess

PARTITIONS = 16
POINTS_PER_SCRAPE = 80


def parser_rates(rounds: int = 200) -> dict[str, Any]:
    """Samples/s of the streamer's parse path and of prometheus_client's parser."""
    pages = [Node("bench", i, 8, 3).page(1_752_871_350.0 + i) for i in range(rounds)]
    n = sum(p.count("\n") - 20 for p in pages)  # minus the HELP/TYPE lines

    def ours() -> None:
        cache: dict[str, int] = {}
        for page in pages:
            for _name, labels, _value, _ts in samples(page, lambda _r: None):
                if cache.get(labels) is None:
                    cache[labels] = len(cache)

    def reference() -> None:
        for page in pages:
            for family in text_string_to_metric_families(page):
                for _s in family.samples:
                    pass

    return {
        "samples": n,
        "ours_samples_per_s": round(n / _best(ours)),
        "prometheus_client_samples_per_s": round(n / _best(reference)),
    }


def _best(fn: Any, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _exporters(tmp: Path, targets: int, procs: int) -> tuple[list[ManagedProcess], Path]:
    """Start the fake exporter processes; return them and one file_sd file of all targets."""
    groups: list[Any] = []
    started: list[ManagedProcess] = []
    per = -(-targets // procs)
    for i in range(procs):
        count = min(per, targets - i * per)
        sd = tmp / f"exporters-{i}.json"
        p = ManagedProcess(
            [str(BIN / "gputel-fake-exporter"), "--listen", "127.0.0.1:0", "--targets",
             str(count), "--prefix", f"b{i}", "--targets-file", str(sd)],
            tmp / f"exporters-{i}.log",
        )  # fmt: skip
        p.spawn()
        started.append(p)
        if not wait_for(sd.exists, 30):
            raise TimeoutError(f"fake exporter {i} did not start:\n{p.log_tail()}")
        groups += json.loads(sd.read_text())
    all_sd = tmp / "targets.json"
    all_sd.write_text(json.dumps(groups))
    return started, all_sd


def pipeline(
    targets: int = 1000, duration_s: float = 60.0, interval_s: float = 1.0,
    exporter_procs: int = 2, warmup_s: float = 10.0, probe_gpus: int = 8,
) -> dict[str, Any]:  # fmt: skip
    """Scrape `targets` every `interval_s` for a `duration_s` window (see the module doc)."""
    with tempfile.TemporaryDirectory(prefix="gputel-scrape-bench-") as tmpdir:
        tmp = Path(tmpdir)
        exporters, sd = _exporters(tmp, targets, exporter_procs)
        topics = ["--topic", f"telemetry:{PARTITIONS}", "--topic", "telemetry.dlq:4"]
        broker = BrokerProcess(tmp / "broker", *topics).start()
        db = tmp / "gputel.db"
        pipe = Pipeline(tmp, broker, ["--store", f"sqlite:{db}"], tmp / "unused.csv")
        try:
            return _measure(pipe, exporters, sd, db, targets, duration_s, interval_s,
                            warmup_s, probe_gpus)  # fmt: skip
        finally:
            pipe.stop_all()
            broker.stop()
            for e in exporters:
                e.terminate(10)


def _measure(
    pipe: Pipeline, exporters: list[ManagedProcess], sd: Path, db: Path, targets: int,
    duration_s: float, interval_s: float, warmup_s: float, probe_gpus: int,
) -> dict[str, Any]:  # fmt: skip
    collector = pipe.collector().start()
    gateway = pipe.start_gateway()
    streamer = pipe.streamer(
        "--targets-file", str(sd), "--scrape-interval-s", str(interval_s),
        "--scrape-timeout-s", str(interval_s),
    ).start()  # fmt: skip
    base = gateway.health_url.rsplit("/", 1)[0]
    assert wait_for(lambda: len(pipe.api("/api/v1/gpus", limit=probe_gpus)["gpus"]) >= probe_gpus,
                    60), "no GPUs arrived"  # fmt: skip
    uuids = [g["uuid"] for g in pipe.api("/api/v1/gpus", limit=probe_gpus)["gpus"]]
    probe = LatencyProbe(base, uuids)
    probe.start()
    trees = {"streamer": streamer, "broker": pipe.broker, "collector": collector,
             "gateway": gateway}  # fmt: skip
    tree = {n: descendants(p.proc.pid) for n, p in trees.items() if p.proc is not None}
    tree["exporters"] = [p.proc.pid for p in exporters if p.proc is not None]
    cpu = CpuMeter(tree)
    time.sleep(warmup_s)
    s0 = scrape(metrics_url(streamer))
    w0 = time.time_ns()
    cpu.start()
    time.sleep(duration_s)
    w1 = time.time_ns()
    cores = cpu.stop()
    s1 = scrape(metrics_url(streamer))
    time.sleep(2 * interval_s)
    wait_for(lambda: (pipe.lag() or 0) == 0, 120)
    probe.stop()
    latency = window_latencies(probe, base, w0, w1)
    with sqlite3.connect(db) as conn:
        (stored_points,) = conn.execute(
            "SELECT count(*) FROM points WHERE time_ns >= ? AND time_ns < ?", (w0, w1)
        ).fetchone()
    expected = round(targets * (w1 - w0) / 1e9 / interval_s)
    stored = stored_points / POINTS_PER_SCRAPE
    errors = sum(v for k, v in s1.items() if k.startswith("gpu_telemetry_scrape_errors_total"))
    errors -= sum(v for k, v in s0.items() if k.startswith("gpu_telemetry_scrape_errors_total"))
    skipped = sum(v for k, v in s1.items() if k.startswith("gpu_telemetry_scrape_skipped_total"))
    skipped -= sum(v for k, v in s0.items() if k.startswith("gpu_telemetry_scrape_skipped_total"))
    return {
        "targets": targets, "interval_s": interval_s, "window_s": round((w1 - w0) / 1e9, 2),
        "samples_per_s": round(stored_points / ((w1 - w0) / 1e9)),
        "scrapes_expected": expected, "scrapes_stored": stored,
        "lost": round(expected - stored, 1), "scrape_errors": errors, "scrapes_skipped": skipped,
        "scrape_p50_s": histogram_quantile(s0, s1, "gpu_telemetry_scrape_seconds", 0.5),
        "scrape_p99_s": histogram_quantile(s0, s1, "gpu_telemetry_scrape_seconds", 0.99),
        "scrape_count": hist_delta(s0, s1, "gpu_telemetry_scrape_seconds")[0],
        "freshness": latency,
        "cores": cores,
    }  # fmt: skip


def run(targets: int = 1000, duration_s: float = 60.0) -> dict[str, Any]:
    """Both parts (see the module doc)."""
    return {"parser": parser_rates(), "pipeline": pipeline(targets, duration_s)}


def main() -> None:
    """Print the numbers as JSON."""
    targets = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
    print(json.dumps(run(targets, seconds), indent=2))


if __name__ == "__main__":
    main()

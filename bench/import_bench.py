"""Import of a real-format DCGM export: CSV -> streamer -> walbroker (fsync) -> collector -> SQLite.

The export is generated (`scripts/gen_dcgm.py`, 3,088 hosts x 8 GPUs x 10 metrics, one
scrape: 247,030 distinct rows of 24,703 GPUs, every field quoted, ~400-character
`labels_raw` with doubled quotes, ~111 MB) and kept in `~/.cache/gputel/bench/`. The
broker (fsync on every commit), one collector and the streamer are processes on
loopback; the streamer runs `--passes 1 --time source`, as `gputel-up --csv FILE --passes
1 --time source` does.

Figures: `points_per_s` = rows / (streamer spawn -> the collector's flushed count reaches
every row, i.e. written to SQLite AND committed); the streamer's own rate and exit time;
`first_publish_s` (spawn -> the first acknowledged point, from the streamer's
`/metrics`, so the interpreter's start-up is in it); `scan_elapsed_s`, the streamer's own
time for reading the file; its peak RSS (VmHWM); the store's exact count, which must equal
the rows. CPU: `cpu_s` per process (streamer, broker, collector) over the import, and
`points_per_cpu_s` = rows / their sum, the figure that does not depend on what else runs
on the machine; `machine_busy_cores` says how busy the machine was meanwhile (2 = full).

`run()` is called by `bench/run.py`; `python -m bench.import_bench [hosts]` prints JSON.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.e2e_bench import FLUSHED, PUBLISHED, cpu_seconds, machine_busy_s
from scripts import gen_dcgm
from store import open_store
from tests.e2e.pipeline import Pipeline, Proc, http_get
from tests.fixtures.broker import BrokerProcess

CACHE = Path.home() / ".cache" / "gputel" / "bench"
PARTITIONS = 16
# Polling is an observer on the same 2 cores: each /metrics poll costs the polled process a
# render (~1 ms). The streamer's /proc figures are read every tick (its /metrics only until
# the first publish); the collector's /metrics every 0.25 s until it holds most rows, then
# every 20 ms, so the end is still timed to ~20 ms.
POLL_TICK_S, POLL_COARSE_S, POLL_FINE_S, FINE_FROM = 0.05, 0.25, 0.02, 0.8


def export(hosts: int) -> Path:
    """The generated export of `hosts` x 8 GPUs (made once, then reused)."""
    path = CACHE / f"dcgm-real-{hosts}x8-seed11.csv"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(".part")
        with open(part, "w", encoding="utf-8", newline="") as f:
            gen_dcgm.write(f, 11, hosts, 8, 1)
        part.rename(path)
    return path


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a live process in MiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _metric(p: Proc, name: str) -> float:
    """One unlabelled counter of `p`'s /metrics, read by a line scan (0 when absent or down)."""
    try:
        status, body = http_get(p.metrics_url, 5)
    except OSError:
        return 0.0
    head = f"{name} ".encode()
    for line in body.splitlines() if status == 200 else ():
        if line.startswith(head):
            return float(line[len(head) :])
    return 0.0


def _watch(streamer: Proc, collector: Proc, rows: int, t0: float) -> dict[str, Any]:
    """Poll until every row is flushed; the times and the streamer's peak RSS and CPU."""
    assert streamer.proc is not None
    first = streamed = None
    rss = cpu = 0.0
    deadline = t0 + 600
    tick, next_poll = POLL_TICK_S, 0.0
    while time.monotonic() < deadline:
        rss = max(rss, peak_rss_mib(streamer.proc.pid))
        cpu = max(cpu, cpu_seconds(streamer.proc.pid))  # 0 once it is gone: keep the last
        if first is None and _metric(streamer, PUBLISHED) > 0:
            first = time.monotonic() - t0
        if streamed is None and streamer.proc.poll() is not None:
            streamed = time.monotonic() - t0
        if time.monotonic() >= next_poll:
            flushed = _metric(collector, FLUSHED)
            if flushed >= rows:
                break
            near = flushed >= FINE_FROM * rows
            tick = POLL_FINE_S if near else POLL_TICK_S
            next_poll = time.monotonic() + (POLL_FINE_S if near else POLL_COARSE_S)
        time.sleep(tick)
    done = time.monotonic() - t0
    code = streamer.wait(120)
    streamed = streamed or time.monotonic() - t0
    return {
        "first_publish_s": None if first is None else round(first, 2),
        "streamer_exit_s": None if streamed is None else round(streamed, 2),
        "end_to_end_s": round(done, 2),
        "streamer_peak_rss_mib": round(rss, 1),
        "streamer_exit_code": code,
        "streamer_cpu_s": round(cpu, 2),
    }


def run(hosts: int = 3088) -> dict[str, Any]:
    """Import the export once; return the figures (see the module docstring)."""
    csv = export(hosts)
    rows = hosts * 8 * len(gen_dcgm.METRICS) - len(gen_dcgm.METRICS)  # one host misses a GPU
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        broker = BrokerProcess(
            tmp / "broker", "--topic", f"telemetry:{PARTITIONS}", "--topic", "telemetry.dlq:4"
        ).start()
        db = tmp / "gputel.db"
        pipe = Pipeline(tmp, broker, ["--store", f"sqlite:{db}"], csv)
        try:
            collector = pipe.collector().start()
            streamer = pipe.streamer("--passes", "1", "--time", "source")
            servers = {"broker": _pid(broker), "collector": _pid(collector)}
            cpu0 = {n: cpu_seconds(pid) for n, pid in servers.items()}
            busy0 = machine_busy_s()
            t0 = time.monotonic()
            streamer.start(wait=False)
            figures = _watch(streamer, collector, rows, t0)
            cpu = {n: round(cpu_seconds(pid) - cpu0[n], 2) for n, pid in servers.items()}
            cpu["streamer"] = figures.pop("streamer_cpu_s")
            busy1 = machine_busy_s()
            log = streamer.log_text()
            with open_store(f"sqlite:{db}") as store:
                stored = sum(store.count_points().values())
        finally:
            pipe.stop_all()
            broker.stop()
    return {
        "rows": rows,
        "file_mib": round(csv.stat().st_size / 2**20, 1),
        "stored": stored,
        "points_per_s": round(rows / figures["end_to_end_s"]),
        "streamer_rows_per_s": round(rows / figures["streamer_exit_s"]),
        **figures,
        "scan_elapsed_s": _log_number(log, '"msg": "source scanned"', "elapsed_s"),
        "cpu_s": cpu,
        "points_per_cpu_s": round(rows / sum(cpu.values())),
        "machine_busy_cores": round(
            (busy1[0] - busy0[0]) / (busy1[1] - busy0[1]) * (os.cpu_count() or 1), 2
        ),
    }


def _pid(p: Proc | BrokerProcess) -> int:
    assert p.proc is not None
    return p.proc.pid


def _log_number(log: str, marker: str, key: str) -> float | None:
    """A number from the first JSON log line holding `marker`."""
    for line in log.splitlines():
        if marker in line:
            value = json.loads(line).get(key)
            return float(value) if value is not None else None
    return None


def main() -> None:
    """Print the numbers as JSON."""
    hosts = int(sys.argv[1]) if len(sys.argv) > 1 else 3088
    print(json.dumps(run(hosts), indent=2))


if __name__ == "__main__":
    main()

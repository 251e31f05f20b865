"""Gateway under slow HTTP clients: do well-behaved requests still succeed, and how fast?

For each setup (gateway flags), a real `gputel-gateway` on a small SQLite store (the gateway
tests' data set) serves a probe of well-behaved clients (2 threads, a new connection per
request, GPU list / GPU / one telemetry page in turn, 2 s timeout): first alone for
`baseline_s`, then while `slow` slowloris connections trickle header lines (one every
`interval_s`, reconnecting whenever the server closes them; from a process of their own) for
`seconds`. Figures: success
ratio, p50/p99/max of the probe, and how often the server cut a slow client off.

Target (issue 13): with 50 slow connections for 60 s, >= 99 % of the probe succeeds and its
p99 stays <= 100 ms, both in the `make run` shape (1 worker) and the chart's (2 workers).

`python -m bench.gateway_slowloris [seconds] [setup ...]` prints JSON; `SETUPS` lists them.
Not part of `make bench` (5 setups x 65 s); its figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from store import open_store
from tests.e2e.pipeline import BIN, Proc, wait_for
from tests.fixtures.broker import free_port
from tests.gateway import data
from tests.hostile.slowloris import SlowlorisProcess, probe

PATHS = [
    "/api/v1/gpus",
    f"/api/v1/gpus/{data.UNIQUE.uuid}",
    f"/api/v1/gpus/{data.UNIQUE.uuid}/telemetry?limit=100",
]
# name -> gateway flags. "make_run": the `make run` shape (1 worker); "chart": the chart's
# (2 workers); both on the default worker model, then the models it was chosen against.
SETUPS: dict[str, list[str]] = {
    "make_run": [],
    "chart": ["--workers", "2"],
    "sync_1": ["--worker-class", "sync"],  # the SQLite default before
    # the chart's shape before (InfluxDB default: gthread, 4 threads)
    "gthread_2x4": ["--workers", "2", "--worker-class", "gthread", "--threads", "4"],
    "gthread_1x64": ["--worker-class", "gthread", "--threads", "64"],
}


def gateway(db: Path, flags: list[str], log: Path) -> Proc:
    port = free_port()
    argv = [str(BIN / "gputel-gateway"), "--store", f"sqlite:{db}",
            "--bind", f"127.0.0.1:{port}", *flags]  # fmt: skip
    gw = Proc("gateway", argv, log, f"http://127.0.0.1:{port}/healthz", port)
    gw.spawn()
    if not wait_for(gw.healthy, 30):
        raise TimeoutError(f"gateway not healthy; log:\n{gw.log_tail()}")
    return gw


def measure(
    port: int, seconds: float, slow: int, baseline_s: float, interval_s: float
) -> dict[str, Any]:
    """The probe alone, then under `slow` slowloris connections."""
    base = probe("127.0.0.1", port, PATHS, baseline_s).summary()
    attacker = SlowlorisProcess("127.0.0.1", port, slow, seconds, interval_s).start()
    time.sleep(min(2.0, seconds / 10))  # let every slow connection get in first
    under = probe("127.0.0.1", port, PATHS, seconds - min(2.0, seconds / 10)).summary()
    attack = attacker.result()
    return {
        "baseline": base,
        "under_slowloris": under,
        "slow_connections_opened": attack.opened,
        "slow_connections_cut_by_server": attack.closed_by_server,
        "target_met": under["success_ratio"] >= 0.99 and under["p99_ms"] <= 100,
    }


def run(
    seconds: float = 60.0,
    setups: tuple[str, ...] = tuple(SETUPS),
    slow: int = 50,
    baseline_s: float = 5.0,
    interval_s: float = 1.0,
) -> dict[str, Any]:
    """Figures per setup; `bench/run.py` records them."""
    result: dict[str, Any] = {
        "slow_connections": slow, "seconds": seconds, "header_line_every_s": interval_s,
        "probe": {"clients": 2, "paths": PATHS, "timeout_s": 2.0},
        "targets": {"success_ratio": 0.99, "p99_ms": 100},
        "setups": {name: SETUPS[name] for name in setups},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gputel-slowloris-bench-") as tmpdir:
        tmp = Path(tmpdir)
        db = tmp / "telemetry.db"
        with open_store(f"sqlite:{db}") as store:
            store.write(data.seed())
        for name in setups:
            print(f"gateway_slowloris: {name}", file=sys.stderr)
            gw = gateway(db, SETUPS[name], tmp / f"gateway-{name}.log")
            try:
                result[name] = measure(gw.port, seconds, slow, baseline_s, interval_s)
            finally:
                gw.terminate(15)
    return result


if __name__ == "__main__":
    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    names = tuple(sys.argv[2:]) or tuple(SETUPS)
    print(json.dumps(run(seconds=secs, setups=names), indent=2))

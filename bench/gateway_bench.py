"""Gateway HTTP load: requests/s and latency of a real gunicorn on a 10-million-point SQLite store.

The store holds `hosts` x 8 GPUs x 10 metrics scraped every 30 s (10 M points: 256 GPUs,
~32.5 hours). It is filled once through `SqliteStore.write` in 50,000-point batches and
cached in ~/.cache/gputel/bench/ under a name made of its parameters, so re-runs skip the
fill. `gputel-gateway` serves it in each setup of SETUPS (workers, threads); every telemetry path
is requested once first (page cache). The load comes from a separate process with 16
connections for `seconds` (keep-alive where the server keeps them):

- `gpus`: `GET /api/v1/gpus` (every GPU with first and last seen, one page).
- `telemetry_1h`: `GET /api/v1/gpus/{uuid}/telemetry?start_time=..&end_time=..&limit=1000`
  for a random GPU and a random one-hour window (1,200 points stored; the page holds 1,000).

Load generators: `wrk` (C, epoll; a Lua script picks the paths and prints percentiles
as JSON) and a Python client (2 processes x 8 threads, one `http.client` keep-alive
connection each). Both are closed-loop: each connection sends its next request when
the previous answer arrived, so latency is service time under that load. On 2 cores the
client competes with the server for CPU, so each figure records the client's and the
gateway's CPU (cores used) beside it.

`run()` is called by `bench/run.py`; `python -m bench.gateway_bench [seconds]` prints JSON.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing as mp
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.e2e_bench import CpuMeter, descendants
from bench.store_bench import METRICS
from proto.batch import Gpu, PointBatch
from store import open_store
from tests.e2e.pipeline import BIN, Proc
from tests.fixtures.broker import free_port

T0_NS = 1_700_000_000_000_000_000
HOUR_NS = 3600 * 10**9
CACHE = Path(os.environ.get("GPUTEL_CACHE_DIR", Path.home() / ".cache" / "gputel")) / "bench"
CONNECTIONS = 16
WRK_LUA = """
local paths = {}
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
end
function init(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  math.randomseed(id * 7919 + os.time())
end
function request()
  return wrk.format("GET", paths[math.random(#paths)])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


# ---- the store ---------------------------------------------------------------------------


def gpus(hosts: int) -> list[Gpu]:
    return [
        Gpu(uuid=f"GPU-{h:03d}{i}-bench", hostname=f"host-{h:03d}", gpu=i, device=f"nvidia{i}",
            model="NVIDIA H100 80GB HBM3")
        for h in range(hosts) for i in range(8)
    ]  # fmt: skip


def batches(points: int, hosts: int, interval_s: int, size: int) -> Iterator[PointBatch]:
    """`points` points, scrape after scrape (every GPU x every metric per scrape)."""
    fleet = gpus(hosts)
    per_scrape = len(fleet) * len(METRICS)
    slots = [(g, m) for g in range(len(fleet)) for m in range(len(METRICS))]
    for first in range(0, points, size):
        b = PointBatch(gpus=fleet, metrics=list(METRICS))
        for k in range(first, min(first + size, points)):
            scrape, slot = divmod(k, per_scrape)
            t = T0_NS + scrape * interval_s * 10**9
            b.gpu_index.append(slots[slot][0])
            b.metric_index.append(slots[slot][1])
            b.time_ns.append(t)
            b.value.append(float(k % 97))
            b.source_time_ns.append(t)
        yield b


def filled_store(points: int, hosts: int, interval_s: int) -> tuple[Path, float | None]:
    """The cached SQLite file for these parameters, filled first if missing; (path, fill s)."""
    # v2: files written before the GPU catalog have an empty catalog (every GPU answers 404);
    # v3: metric ids (a v2 file would be converted at the gateway's first open, ~1 min).
    path = CACHE / f"gateway-sqlite-{points}p-{hosts}h-{interval_s}s-v3.db"
    if path.exists():
        return path, None
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".filling")
    for leftover in CACHE.glob(partial.name + "*"):
        leftover.unlink()
    started = time.monotonic()
    with open_store(f"sqlite:{partial}") as store:
        for b in batches(points, hosts, interval_s, 50_000):
            store.write(b)
    # Fold the WAL into the main file so the cached copy is one self-contained file.
    with sqlite3.connect(partial) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
    partial.rename(path)
    return path, round(time.monotonic() - started, 1)


def paths(endpoint: str, points: int, hosts: int, interval_s: int, n: int = 2000) -> list[str]:
    """Request paths: the GPU list, or `n` random one-hour pages (random GPU and hour)."""
    if endpoint == "gpus":
        return ["/api/v1/gpus"]
    span_ns = points // (hosts * 8 * len(METRICS)) * interval_s * 10**9
    rng = random.Random(7)
    out = []
    for _ in range(n):
        uuid = rng.choice(gpus(hosts)).uuid
        start = T0_NS + rng.randrange(0, span_ns - HOUR_NS, interval_s * 10**9)
        out.append(
            f"/api/v1/gpus/{uuid}/telemetry?start_time={start // 10**9}"
            f"&end_time={(start + HOUR_NS) // 10**9}&limit=1000"
        )
    return out


# ---- load generators ---------------------------------------------------------------------


class WrkLoad:
    """wrk with `connections` connections on 2 threads; `result()` waits for it."""

    def __init__(
        self, base: str, todo: list[str], seconds: float, tmp: Path, connections: int
    ) -> None:
        script, path_file = tmp / "load.lua", tmp / "paths.txt"
        script.write_text(WRK_LUA)
        path_file.write_text("\n".join(todo) + "\n")
        argv = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{int(seconds)}s",
                "--timeout", "10s", "-s", str(script), base, "--", str(path_file)]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.started = time.monotonic()

    def result(self) -> dict[str, Any]:
        """The figures, with the client's own CPU (from its rusage when reaped)."""
        assert self.proc.stdout is not None
        out = self.proc.stdout.read().decode()
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - self.started
        line = next((x for x in out.splitlines() if x.startswith("JSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no result: {out[-500:]}")
        r = json.loads(line[5:])
        return {
            "requests": r["requests"],
            "requests_per_s": round(r["requests"] / (r["duration_us"] / 1e6)),
            "p50_ms": round(r["p50_us"] / 1000, 2), "p99_ms": round(r["p99_us"] / 1000, 2),
            "max_ms": round(r["max_us"] / 1000, 2),
            "errors": r["non_2xx"] + r["socket_errors"],
            "client_cores": round((usage.ru_utime + usage.ru_stime) / wall, 3),
        }  # fmt: skip


def _py_client(base: str, todo: list[str], seconds: float, threads: int, out: Any) -> None:
    """One client process: `threads` keep-alive connections, closed loop until the deadline."""
    host, port = base.removeprefix("http://").split(":")
    cpu0, deadline = os.times(), time.perf_counter() + seconds
    results: list[tuple[float, int]] = []
    lock = threading.Lock()

    def loop(seed: int) -> None:
        rng, mine = random.Random(seed), []
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        while (t0 := time.perf_counter()) < deadline:
            conn.request("GET", rng.choice(todo))
            resp = conn.getresponse()
            resp.read()
            mine.append((time.perf_counter() - t0, resp.status))
        conn.close()
        with lock:
            results.extend(mine)

    ts = [threading.Thread(target=loop, args=(os.getpid() * 100 + i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    cpu1 = os.times()
    out.put((results, cpu1.user + cpu1.system - cpu0.user - cpu0.system))


class PythonLoad:
    """2 client processes, each with connections/2 threads (one keep-alive connection each)."""

    def __init__(self, base: str, todo: list[str], seconds: float, connections: int) -> None:
        ctx = mp.get_context("spawn")
        self.q, self.seconds = ctx.Queue(), seconds
        self.procs = [
            ctx.Process(target=_py_client, args=(base, todo, seconds, connections // 2, self.q))
            for _ in range(2)
        ]
        for p in self.procs:
            p.start()

    def result(self) -> dict[str, Any]:
        """The figures, with the client processes' CPU during the load."""
        got = [self.q.get(timeout=self.seconds + 60) for _ in self.procs]
        for p in self.procs:
            p.join()
        results = [r for rs, _ in got for r in rs]
        lat = sorted(r[0] for r in results)
        pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2)  # noqa: E731
        return {
            "requests": len(lat), "requests_per_s": round(len(lat) / self.seconds),
            "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": pick(1.0),
            "errors": sum(1 for r in results if r[1] != 200),
            "client_cores": round(sum(c for _, c in got) / self.seconds, 3),
        }  # fmt: skip


# ---- measurements ---------------------------------------------------------------------


def gateway(db: Path, flags: list[str], tmp: Path, name: str) -> Proc:
    port = free_port()
    argv = [str(BIN / "gputel-gateway"), "--store", f"sqlite:{db}",
            "--bind", f"127.0.0.1:{port}", *flags]  # fmt: skip
    return Proc("gateway", argv, tmp / f"gateway-{name}.log", f"http://127.0.0.1:{port}/healthz")


def warm(gw: Proc, todo: list[str]) -> None:
    """Request every path once, so no measured request is the first to read its pages.

    The SQLite file is larger than what this machine keeps in its page cache between runs;
    without this, a page's first read from disk lands in the measured window.
    """
    host, port = gw.health_url.removeprefix("http://").split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    for path in todo:
        conn.request("GET", path)
        conn.getresponse().read()
    conn.close()


def measure(
    gw: Proc, client: str, todo: list[str], seconds: float, tmp: Path, connections: int
) -> dict[str, Any]:
    """One load run against a running gateway; figures plus the CPU of gateway and client."""
    assert gw.proc is not None
    base = gw.health_url.rsplit("/", 1)[0]
    cpu = CpuMeter({"gateway": descendants(gw.proc.pid)})
    cpu.start()
    if client == "wrk":
        load: WrkLoad | PythonLoad = WrkLoad(base, todo, seconds, tmp, connections)
    else:
        load = PythonLoad(base, todo, seconds, connections)
    figures = load.result()
    cores = cpu.stop()
    figures["gateway_cores"] = cores["gateway"]
    figures["machine_busy_cores"] = cores["machine_busy_cores"]
    return figures


def _runs(
    gw: Proc, todo: dict[str, list[str]], seconds: float, tmp: Path, python_too: bool
) -> dict[str, Any]:
    """Every endpoint with wrk (and the Python client), then one connection alone (wrk)."""
    runs: dict[str, Any] = {}
    for client in ("wrk", "python") if python_too else ("wrk",):
        for endpoint, todo_e in todo.items():
            print(f"gateway_bench: {gw.argv[6:]}, {client}, {endpoint}", file=sys.stderr)
            runs[f"{endpoint}_{client}"] = measure(gw, client, todo_e, seconds, tmp, CONNECTIONS)
    for endpoint, todo_e in todo.items():  # service time without queueing
        runs[f"{endpoint}_wrk_1_connection"] = measure(gw, "wrk", todo_e, seconds / 3, tmp, 1)
    return runs


# Gateway flags per measured setup. The first is the default (gevent workers, one request per
# connection; see gateway/worker.py); the sync worker was the SQLite default before it (the same
# one-request-per-connection shape, but one slow client holds a whole worker); the third is
# gthread with keep-alive (the InfluxDB default before).
SETUPS: dict[str, list[str]] = {
    "workers_2": ["--workers", "2"],
    "workers_2_sync": ["--workers", "2", "--worker-class", "sync"],
    "workers_2_threads_4": ["--workers", "2", "--worker-class", "gthread", "--threads", "4"],
}


def run(
    seconds: float = 30.0,
    points: int = 10_000_000,
    hosts: int = 32,
    interval_s: int = 30,
    setups: tuple[str, ...] = tuple(SETUPS),
    python_client_setups: tuple[str, ...] = ("workers_2",),
) -> dict[str, Any]:
    """Load figures per gateway setup, endpoint and client; targets as in issue 6."""
    db, fill_s = filled_store(points, hosts, interval_s)
    result: dict[str, Any] = {
        "store": {"kind": "sqlite", "points": points, "gpus": hosts * 8,
                  "metrics": len(METRICS), "scrape_interval_s": interval_s,
                  "size_mib": round(db.stat().st_size / 2**20), "fill_s": fill_s},
        "connections": CONNECTIONS, "seconds": seconds,
        "setups": {name: SETUPS[name] for name in setups},
        "targets": {"gpus_requests_per_s": 1000, "telemetry_1h_p99_ms": 50},
    }  # fmt: skip
    todo = {e: paths(e, points, hosts, interval_s) for e in ("gpus", "telemetry_1h")}
    with tempfile.TemporaryDirectory(prefix="gputel-gateway-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for name in setups:
            gw = gateway(db, SETUPS[name], tmp, name).start()
            try:
                warm(gw, todo["telemetry_1h"])  # page cache
                measure(gw, "wrk", todo["telemetry_1h"] + todo["gpus"], 3, tmp, CONNECTIONS)
                result[name] = _runs(gw, todo, seconds, tmp, name in python_client_setups)
            finally:
                gw.terminate(15)
    return result


if __name__ == "__main__":
    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    print(json.dumps(run(seconds=secs), indent=2))

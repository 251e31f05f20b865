"""Gateway CPU per request by gunicorn worker model: sync (before) against gevent (default).

On a machine too busy for throughput figures to compare (other tenants), CPU time per
request still does. For each round and model, a real `gputel-gateway --workers 2` on the
`gateway_bench` SQLite store (1 M points here) serves one client sequentially (a new
connection per request, as both models answer): 1,000 GPU lists and 400 one-hour pages.
The workers' CPU (utime + stime from /proc) over the requests, divided by their number.

`python -m bench.gateway_worker_cpu [rounds]` prints JSON.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import gateway_bench as g
from bench.e2e_bench import descendants

POINTS, HOSTS, INTERVAL_S = 1_000_000, 32, 30
MODELS = {"sync": ["--workers", "2", "--worker-class", "sync"], "gevent": ["--workers", "2"]}


def cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def one(host: str, port: int, pids: list[int], paths: list[str], n: int) -> dict[str, float]:
    c0, lat = cpu_s(pids), []
    for i in range(n):
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("GET", paths[i % len(paths)])
        resp = conn.getresponse()
        resp.read()
        conn.close()
        assert resp.status == 200, (resp.status, paths[i % len(paths)])
        lat.append(time.perf_counter() - t0)
    lat.sort()
    return {
        "cpu_ms_per_request": round((cpu_s(pids) - c0) / n * 1000, 3),
        "p50_ms": round(lat[n // 2] * 1000, 2),
    }


def run(rounds: int = 2) -> dict[str, Any]:
    db, _ = g.filled_store(POINTS, HOSTS, INTERVAL_S)
    todo = {
        "gpus": (g.paths("gpus", POINTS, HOSTS, INTERVAL_S), 1000),
        "telemetry_1h": (g.paths("telemetry_1h", POINTS, HOSTS, INTERVAL_S)[:400], 400),
    }
    out: dict[str, Any] = {"points": POINTS, "models": MODELS}
    with tempfile.TemporaryDirectory(prefix="gputel-gateway-cpu-") as tmpdir:
        for rnd in range(rounds):
            for name, flags in MODELS.items():
                gw = g.gateway(db, flags, Path(tmpdir), f"{name}{rnd}").start()
                try:
                    assert gw.proc is not None
                    g.warm(gw, todo["telemetry_1h"][0])
                    host, port = gw.health_url.removeprefix("http://").split("/")[0].split(":")
                    pids = descendants(gw.proc.pid)
                    for ep, (paths, n) in todo.items():
                        got = one(host, int(port), pids, paths, n)
                        out.setdefault(f"{name}_{ep}", []).append(got)
                        print(name, ep, got, file=sys.stderr)
                finally:
                    gw.terminate(15)
    return out


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 2), indent=1))

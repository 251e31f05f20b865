"""Two source trees' gateways, alternated against one InfluxDB holding the benchmark fleet.

    python -m bench.fleet_ab GPUS SECONDS ROUNDS TREE [TREE ...]

`fleet_bench` measures one commit; this compares commits on a machine whose speed moves
between runs (other tenants): each round starts a gateway from each tree in turn
(`PYTHONPATH=TREE python -P -m gateway.cli` run in TREE, 2 workers, GPU-list cache off) on the same
cached InfluxDB fleet (`fleet_bench.influx_server`), and loads the same paths with wrk:
the one-hour telemetry page at 2 and 16 connections, then the GPU page, the host page and
a GPU's detail at 2 (set FLEET_AB_LISTS=0 to skip those). One JSON line per measurement,
with the CPU the gateway and influxd spent per request (compare those first).
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
from pathlib import Path

from bench.fleet_bench import (
    QUIET_CONNECTIONS,
    endpoints_in_process,
    influx_server,
    measure,
    telemetry_paths,
)
from bench.fleet_data import fleet
from bench.gateway_bench import CONNECTIONS, warm
from tests.e2e.pipeline import Proc
from tests.fixtures.broker import free_port


def gateway(tree: str, opts: dict[str, str], tmp: Path) -> Proc:
    """A gateway of `tree`'s code on the fleet's InfluxDB (2 workers, no GPU-list cache).

    It runs in `tree` as well as with it on PYTHONPATH: gunicorn puts its working directory
    first on its workers' `sys.path`, so a gateway started from another source tree ran
    that tree's code whatever PYTHONPATH said (before 2026-12-02 15:40 UTC every gateway
    of a comparison ran the code of the directory the benchmark was started from).
    """
    port = free_port()
    argv = [sys.executable, "-P", "-m", "gateway.cli", "--store", "influx",
            "--influx-url", opts["url"], "--influx-org", "gputel", "--influx-bucket",
            opts["bucket"], "--bind", f"127.0.0.1:{port}", "--workers", "2",
            "--catalog-cache-s", "0"]  # fmt: skip
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = tree
    try:
        gw = Proc("gateway", argv, tmp / "gateway.log", f"http://127.0.0.1:{port}/healthz")
        gw.cwd = tree
        return gw.start()
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


def run(gpus_n: int, seconds: float, rounds: int, trees: list[str]) -> None:
    """Print one JSON line per (round, tree, endpoint, connections)."""
    gpus = fleet(gpus_n)
    server, opts, _ = influx_server(gpus)
    os.environ.setdefault("GPUTEL_INFLUX_TOKEN", opts["token"])
    try:
        sets = {"telemetry_1h": telemetry_paths(gpus, random.Random(5))}
        if os.environ.get("FLEET_AB_LISTS", "1") != "0":
            found = endpoints_in_process(opts, gpus)
            sets |= {k: found[k] for k in ("gpus", "hosts", "gpu_detail")}
        with tempfile.TemporaryDirectory(prefix="gputel-fleet-ab-") as td:
            tmp = Path(td)
            for rnd in range(rounds):
                for tree in trees:
                    gw = gateway(tree, opts, tmp)
                    try:
                        for name, paths in sets.items():
                            warm(gw, paths[:200])
                            conns = [QUIET_CONNECTIONS]
                            conns += [CONNECTIONS] if name == "telemetry_1h" else []
                            for n in conns:
                                f = measure(gw, paths, seconds, tmp, n, server.pid)
                                row = {"endpoint": name, "round": rnd, "tree": tree,
                                       "connections": n, "p50_ms": f.get("p50_ms"),
                                       "p99_ms": f.get("p99_ms"),
                                       "requests_per_s": round(f["requests"] / seconds, 1),
                                       "cpu_ms_per_request": f.get("cpu_ms_per_request"),
                                       "machine_busy_cores": f.get("machine_busy_cores"),
                                       "errors": f.get("errors"),
                                       "loadavg": os.getloadavg()[0]}  # fmt: skip
                                print(json.dumps(row), flush=True)
                    finally:
                        gw.terminate(15)
    finally:
        server.stop()


if __name__ == "__main__":
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    run(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])

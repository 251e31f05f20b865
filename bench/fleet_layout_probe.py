"""The InfluxDB catalog's two layouts side by side, on one server holding both.

Run on a copy of the cached 100,000-GPU fleet that `bench.fleet_relayout` gave the current
layout (one series per catalog shard) beside the old one (one series per GPU or name).
Alternating old and new, it times the statements behind a GPU page (3 shards), a hosts
page (one shard), a GPU's entry and a `hostname` filter: with one client (p50 / p99),
InfluxDB's `EXPLAIN ANALYZE` (planning, execution, cursors), and with `threads`
concurrent clients (p50 / p99 and influxd's CPU per statement, from /proc).

`python -m bench.fleet_layout_probe DATA_DIR [rounds] [threads]` prints JSON.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.fleet_data import fleet
from bench.fleet_probe import _ms, server_plans
from store import catalog, influxql, schema
from store.v1query import QueryClient
from tests.fixtures.influx import InfluxServer, influxd_path

OLD = {"gpus": "gpu_catalog", "names": "gpu_catalog_names"}
GPU_COLUMNS = ", ".join(influxql.ident(c) for c in influxql.CATALOG_COLUMNS)


def _gpus(measurement: str, clauses: list[str]) -> str:
    return f"SELECT {GPU_COLUMNS} FROM {influxql.ident(measurement)} WHERE {' AND '.join(clauses)}"


def statements(gpus: int) -> dict[str, dict[str, str]]:
    """The same reads in each layout (the old one's tags are the new one's fields)."""
    g = fleet(gpus)[gpus // 2]
    shard = catalog.shard_of(g.uuid)
    out: dict[str, dict[str, str]] = {}
    entry = [influxql.shard_clause(range(shard, shard + 1)), influxql.eq("uuid", g.uuid)]
    for layout, (gpu_m, names_m, host_m) in {
        "old": (OLD["gpus"], OLD["names"], OLD["gpus"]),
        "new": (schema.CATALOG_MEASUREMENT, schema.NAMES_MEASUREMENT, schema.HOSTS_MEASUREMENT),
    }.items():
        out[layout] = {
            "gpus_page_3_shards": _gpus(gpu_m, [influxql.shard_clause(range(0, 3))]),
            "hosts_shard": influxql.catalog_names("host", range(0, 1)).replace(
                schema.NAMES_MEASUREMENT, names_m
            ),
            "gpu_entry": _gpus(gpu_m, entry),
            "hostname_filter": _gpus(host_m, [influxql.eq("hostname", g.hostname)]),
        }
    return out


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def concurrent(url: str, statement: str, threads: int, each: int, pid: int) -> dict[str, Any]:
    """`threads` clients each running `statement` `each` times; latency and influxd CPU."""
    samples: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        c = QueryClient(url, "fleet", "-", timeout_ms=120_000)
        mine = []
        for _ in range(each):
            started = time.perf_counter()
            c.series(statement)
            mine.append(time.perf_counter() - started)
        c.close()
        with lock:
            samples.extend(mine)

    cpu0 = _cpu_s(pid)
    workers = [threading.Thread(target=client) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    cpu_ms = (_cpu_s(pid) - cpu0) * 1000 / len(samples)
    return _ms(samples) | {"influxd_cpu_ms_per_statement": round(cpu_ms, 2)}


def run(root: Path, rounds: int = 20, threads: int = 16) -> dict[str, Any]:
    """See the module docstring."""
    server = InfluxServer(influxd_path(), root, start_timeout_s=900)
    server.start()
    try:
        todo = statements(100_000)
        client = QueryClient(server.url, "fleet", "-", timeout_ms=120_000)
        times: dict[str, dict[str, list[float]]] = {k: {n: [] for n in todo[k]} for k in todo}
        for _ in range(rounds):
            for name in todo["old"]:
                for layout in ("old", "new"):
                    started = time.perf_counter()
                    rows = client.series(todo[layout][name])
                    times[layout][name].append(time.perf_counter() - started)
                    assert rows, (layout, name)
        out: dict[str, Any] = {"load_average": os.getloadavg()}
        for layout in todo:
            out[layout] = {k: _ms(v) for k, v in times[layout].items()}
            out[layout]["server_plans"] = server_plans(client, todo[layout], max(3, rounds // 4))
        client.close()
        assert server.pid is not None
        for name in ("gpus_page_3_shards", "hosts_shard"):
            for layout in ("old", "new"):
                out[layout][f"{name}_x{threads}"] = concurrent(
                    server.url, todo[layout][name], threads, max(2, rounds // 4), server.pid
                )
        out["load_average_after"] = os.getloadavg()
        return out
    finally:
        server.stop()


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(run(Path(args[0]), *(int(a) for a in args[1:3])), indent=2))

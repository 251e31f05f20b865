"""Catalog reads against fleet size: the same store calls on a small and a large fleet.

Starts the InfluxDB data folders `fleet_bench` cached for two fleet sizes (fill them first
with `python -m bench.fleet_bench N`) and times, with one client calling the store
directly (no gateway, no HTTP load), alternating between the two fleets so that the
machine's load hits both alike: a page of 1,001 GPUs, one after a cursor, a page of hosts,
the metrics, a GPU's catalog entry plus its latest values, and a one-hour telemetry page.
With `old` = 1 it also times, once per fleet, the pre-catalog way of listing GPUs (the
first and last point of every series: minutes at 100,000 GPUs). If the catalog reads are
O(page), both fleets' figures are alike while the old listing grows with the fleet.

InfluxDB's own view: each InfluxQL statement the store sends for these calls is run
`rounds` times as `EXPLAIN ANALYZE`, which reports the server's planning time (index
lookups, one cursor per series) and execution time (reading blocks), and the series and
blocks it touched (`server_plans`).

`python -m bench.fleet_probe [small] [large] [rounds] [old]` prints JSON.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.fleet_bench import DEEP, HOUR, fleet, influx_root
from bench.fleet_data import T0, S
from store import influx_catalog, influxql
from store.base import newest_bound_ns
from store.influx import InfluxStore
from store.v1query import QueryClient
from tests.fixtures.influx import InfluxServer, influxd_path


def calls(store: InfluxStore, gpus: int) -> dict[str, Callable[[], object]]:
    """The timed calls on one fleet."""
    the_fleet = fleet(gpus)
    middle = store.list_gpus(limit=1001)[500].uuid
    deep, other = the_fleet[0].uuid, the_fleet[gpus // 2].uuid
    return {
        "gpus_page": lambda: store.list_gpus(limit=1001),
        "gpus_page_after_cursor": lambda: store.list_gpus(limit=1001, after_uuid=middle),
        "hosts_page": lambda: store.page_names("host", 1001),
        "metrics": lambda: store.page_names("metric", 1001),
        "gpu_detail": lambda: (store.get_gpu(other), store.latest(other)),
        "telemetry_1h": lambda: (
            store.get_gpu(deep),
            store.query_raw(deep, T0 + 600 * S, T0 + 600 * S + HOUR, None, 1001),
        ),
    }


def statements(store: InfluxStore, gpus: int) -> dict[str, str]:
    """The InfluxQL statements behind `calls` (the page's shards as the store reads them)."""
    the_fleet = fleet(gpus)
    deep, other = the_fleet[0].uuid, the_fleet[gpus // 2].uuid
    first = T0 + 600 * S
    return {
        "gpus_page_3_shards": influxql.catalog_gpus(range(0, 3), {}),
        "gpu_entry": influx_catalog.gpu_statement(other),
        "hosts_shard": influxql.catalog_names("host", range(0, 1)),
        "metrics": influxql.catalog_names("metric", None),
        "latest": influxql.latest([other], None, newest_bound_ns()),
        "telemetry_1h_1001": influxql.points(deep, first, first + HOUR, None, 1001),
    }


_DURATION = re.compile(r"([0-9.]+)(ns|µs|us|ms|s)")
_UNIT_MS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1000.0}
_PLAN_FIGURES = ("execution_time", "planning_time", "total_time")
_PLAN_COUNTS = ("cursors_aux", "cursors_ref", "float_blocks_decoded", "string_blocks_decoded")


def explain(client: QueryClient, statement: str) -> dict[str, float]:
    """InfluxDB's EXPLAIN ANALYZE of one statement: its times (ms) and what it touched."""
    [series] = client.series("EXPLAIN ANALYZE " + statement)
    out: dict[str, float] = {}
    for (line,) in series.values:
        key, _, value = line.strip("│├└─ ").partition(": ")
        if key in _PLAN_FIGURES and key not in out and (m := _DURATION.fullmatch(value)):
            out[key] = float(m.group(1)) * _UNIT_MS[m.group(2)]
        elif key in _PLAN_COUNTS:
            out[key] = out.get(key, 0) + int(value)
    return out


def server_plans(client: QueryClient, todo: dict[str, str], rounds: int) -> dict[str, Any]:
    """Median server-side times of each statement over `rounds` EXPLAIN ANALYZE runs."""
    out: dict[str, Any] = {}
    for name, statement in todo.items():
        runs = [explain(client, statement) for _ in range(rounds)]
        out[name] = {k: round(statistics.median(r.get(k, 0) for r in runs), 2) for k in runs[0]}
    return out


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 1), "p99_ms": round(p99 * 1000, 1)}


def run(small: int = 2_000, large: int = 100_000, rounds: int = 30, old: int = 0) -> dict[str, Any]:
    """Figures per fleet size; see the module docstring."""
    servers, stores, todo = {}, {}, {}
    try:
        for n in (small, large):
            root = influx_root(n)
            if not (root / "loaded").exists():
                raise RuntimeError(f"no cached fleet of {n}: run python -m bench.fleet_bench {n}")
            servers[n] = InfluxServer(influxd_path(), root, start_timeout_s=900)
            servers[n].start()
            stores[n] = InfluxStore(servers[n].url, "gputel", "fleet", "unused:unused")
            todo[n] = calls(stores[n], n)
        times: dict[int, dict[str, list[float]]] = {n: {k: [] for k in todo[n]} for n in todo}
        for _ in range(rounds):
            for n in todo:
                for name, call in todo[n].items():
                    started = time.perf_counter()
                    call()
                    times[n][name].append(time.perf_counter() - started)
        out: dict[str, Any] = {"rounds": rounds, "deep_gpus": DEEP}
        for n in todo:
            out[f"gpus_{n}"] = {k: _ms(v) for k, v in times[n].items()}
            client = QueryClient(servers[n].url, "fleet", "-")
            out[f"gpus_{n}"]["server_plans"] = server_plans(
                client, statements(stores[n], n), rounds
            )
            client.close()
            if old:  # every series' first and last point: needs a long timeout
                with InfluxStore(servers[n].url, "gputel", "fleet", "-", timeout_ms=900_000) as s:
                    started = time.perf_counter()
                    listed = s._summaries({})
                    old_s = round(time.perf_counter() - started, 2)
                out[f"gpus_{n}"]["pre_catalog_listing_s"] = {"seconds": old_s, "gpus": len(listed)}
        return out
    finally:
        for store in stores.values():
            store.close()
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    print(json.dumps(run(*(int(a) for a in sys.argv[1:5])), indent=2))

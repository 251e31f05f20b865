"""What one InfluxDB telemetry page costs, part by part, on the cached 100,000-GPU fleet.

One client calls the store (no HTTP, no gateway) `calls` times per part, after 20 warm-up
calls, in two rounds: the page's GPU lookup (`get_gpu`), the same lookup's statement
(`gpu_statement`: it reads the GPU's window of its catalog shard series) and that statement
without the window (`gpu_statement_whole_shard`: the whole shard series, as the `_v2`
layout's lookup read it), the page itself (`query_raw`, 1,001 points of a one-hour window of a deep
GPU) and its InfluxQL statement alone (102 rows of 10 metrics). Per call: wall ms, the client's
CPU ms and influxd's CPU ms (from /proc; influxd's background work lands in it too, so
read the lower round). Needs the fleet cached by `bench.fleet_bench`.

`python -m bench.fleet_page_probe [CALLS]` prints JSON.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.e2e_bench import cpu_seconds
from bench.fleet_bench import DEEP, HOUR, influx_server
from bench.fleet_data import T0, S, fleet
from store import catalog, influxql, open_store, schema
from store.influx_catalog import gpu_statement
from store.v1query import QueryClient


def run(calls: int = 200) -> dict[str, list[dict[str, float]]]:
    """Figures per part and round (see the module docstring)."""
    gpus = fleet(100_000)
    server, opts, _ = influx_server(gpus)
    rng = random.Random(1)
    deep = [g.uuid for g in gpus[:DEEP]]
    out: dict[str, list[dict[str, float]]] = {}
    try:
        store = open_store("influx", **opts)
        client = QueryClient(opts["url"], opts["bucket"], opts["token"])

        def whole_shard(uuid: str) -> Any:
            shard = catalog.shard_of(uuid)
            tags = {schema.TAG_UUID: uuid}
            return client.series(influxql.catalog_gpus(range(shard, shard + 1), tags))

        parts: dict[str, Callable[[str, int, int], Any]] = {
            "get_gpu": lambda u, lo, hi: store.get_gpu(u),
            "gpu_statement": lambda u, lo, hi: client.series(gpu_statement(u)),
            "gpu_statement_whole_shard": lambda u, lo, hi: whole_shard(u),
            "query_raw": lambda u, lo, hi: store.query_raw(u, lo, hi, None, 1001, None),
            "statement": lambda u, lo, hi: client.series(influxql.points(u, lo, hi, None, 102)),
        }
        influxd = server.pid
        assert influxd is not None, "the fleet's influxd is not running"
        for _ in range(2):
            for name, call in parts.items():
                out.setdefault(name, []).append(_measure(call, deep, rng, calls, influxd))
                print(f"fleet_page_probe: {name} {out[name][-1]}", file=sys.stderr, flush=True)
    finally:
        server.stop()
    return out


def _measure(
    call: Callable[[str, int, int], Any], deep: list[str], rng: random.Random, calls: int,
    influxd: int,
) -> dict[str, float]:  # fmt: skip
    def one() -> None:
        start = T0 + rng.randrange(0, HOUR // S) * S
        call(rng.choice(deep), start, start + HOUR)

    for _ in range(20):
        one()
    c0, s0, t0 = time.process_time(), cpu_seconds(influxd), time.perf_counter()
    for _ in range(calls):
        one()
    c1, s1, t1 = time.process_time(), cpu_seconds(influxd), time.perf_counter()
    return {
        "wall_ms": round((t1 - t0) / calls * 1000, 2),
        "client_cpu_ms": round((c1 - c0) / calls * 1000, 2),
        "influxd_cpu_ms": round((s1 - s0) / calls * 1000, 2),
    }


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 200), indent=2))

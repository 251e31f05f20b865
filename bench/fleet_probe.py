"""Catalog reads against fleet size: the same store calls on a small and a large fleet.

Starts the InfluxDB data folders `fleet_bench` cached for two fleet sizes (fill them first
with `python -m bench.fleet_bench N`) and times, with one client calling the store
directly (no gateway, no HTTP load), alternating between the two fleets so that the
machine's load hits both alike: a page of 1,001 GPUs, one after a cursor, a page of hosts,
the metrics, a GPU's catalog entry plus its latest values, and a one-hour telemetry page.
Once per fleet it also times the pre-catalog way of listing GPUs (the first and last point
of every series). If the catalog reads are O(page), both fleets' figures are alike while
the old listing grows with the fleet.

`python -m bench.fleet_probe [small] [large] [rounds]` prints JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.fleet_bench import CACHE, DEEP, HOUR, VERSION, fleet
from bench.fleet_data import T0, S
from store.influx import InfluxStore
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


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 1), "p99_ms": round(p99 * 1000, 1)}


def run(small: int = 2_000, large: int = 100_000, rounds: int = 30) -> dict[str, Any]:
    """Figures per fleet size; see the module docstring."""
    servers, stores, todo = {}, {}, {}
    try:
        for n in (small, large):
            root = CACHE / f"fleet-influx-{n}g-v{VERSION}"
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
            # The pre-catalog listing (every series' first and last point) needs a long timeout.
            with InfluxStore(servers[n].url, "gputel", "fleet", "-", timeout_ms=900_000) as slow:
                started = time.perf_counter()
                listed = slow._summaries({})
                old_s = round(time.perf_counter() - started, 2)
            out[f"gpus_{n}"] = {k: _ms(v) for k, v in times[n].items()}
            out[f"gpus_{n}"]["pre_catalog_listing_s"] = {"seconds": old_s, "gpus": len(listed)}
        return out
    finally:
        for store in stores.values():
            store.close()
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    print(json.dumps(run(*(int(a) for a in sys.argv[1:4])), indent=2))

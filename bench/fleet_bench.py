"""Fleet scale: the catalog reads of a 100,000-GPU fleet on both stores, and what it costs.

Per store (SQLite file; InfluxDB 1.8.10, the real test server):

- Stored: `gpus` GPUs (default 100,000, random-format uuids, 8 per host, three models) x 10
  metrics, one scrape each (1 M points), plus DEEP GPUs with two hours of 30-s scrapes for
  the telemetry pages. Loaded through `Store.write` (so the catalog is written as the
  collector writes it) in 5,000-point batches, two writer threads for InfluxDB (bulk,
  gzipped line protocol). The filled store is cached under ~/.cache/gputel/bench/ by its
  parameters, so a re-run skips the load; InfluxDB's is compacted once after it (`settle`).
- Served by a real `gputel-gateway` (gunicorn, 2 workers, the store's default threads, the
  GPU-list cache off so every request reaches the store) and loaded by wrk, per endpoint
  with 2 connections (one per worker) and with 16: a random page of
  `/api/v1/gpus?limit=1000` (every page of the fleet, found by following cursors),
  `/api/v1/hosts` pages, `/api/v1/metrics`, a random
  `/api/v1/gpus/{uuid}`, and a random one-hour telemetry page (1,200 points stored, limit
  1,000) of a deep GPU. Targets: lists p99 <= 100 ms, detail p99 <= 50 ms (judged at 2
  connections: the store's latency, no request waiting for a busy worker), telemetry on
  InfluxDB p99 <= 100 ms at 16 connections. Each run also records the CPU the gateway and
  the store process (influxd) spent per request: on a machine other tenants keep busy the
  latencies include waiting for a core, the CPU per request does not.
- Collector throughput with and without the catalog, in the same run: a broker topic holds
  `stream_gpus` GPUs x 10 metrics x 6 scrapes 20 s apart (new GPUs at first, then one
  catalog update per GPU at the 60-s granularity); one collector drains it into a fresh
  database with the catalog on, one with it off (`write_catalog=False`), alternating, twice.
  Target: with >= 90 % of without.

`python -m bench.fleet_bench [GPUS [SECONDS [STREAM_GPUS]]]` prints JSON (STREAM_GPUS 0 leaves
out the collector part); `make bench` runs it as `fleet_bench`.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import fleet_stream
from bench.e2e_bench import CpuMeter, descendants
from bench.fleet_data import T0, S, fleet, scrape
from bench.gateway_bench import CACHE, CONNECTIONS, WrkLoad, warm
from bench.store_bench import METRICS
from proto.batch import Gpu, PointBatch
from store import Store, open_store
from tests.e2e.pipeline import BIN, Proc
from tests.fixtures.broker import free_port
from tests.fixtures.influx import InfluxServer, influxd_path

HOUR = 3600 * S
DEEP = 16  # GPUs with two hours of history
DEEP_SCRAPES = 240  # every 30 s
# Versions of the cached data: bump one when its store's layout changes.
SQLITE_VERSION = 2
# InfluxDB: 2: catalog per shard; 3: a GPU's records in its uuid's window; 4: a series per GPU
INFLUX_VERSION = 4
# The list and detail targets are judged with one connection per gateway worker (no request
# waits for a busy worker: the store's latency), the telemetry page with 16 (issue 18).
QUIET_CONNECTIONS = 2
TARGETS_MS = {"gpus": 100, "hosts": 100, "metrics": 100, "gpu_detail": 50, "telemetry_1h": 100}


def load_batches(gpus: list[Gpu]) -> Iterator[PointBatch]:
    """The fleet's scrape in 500-GPU batches, then the deep GPUs' history."""
    for i in range(0, len(gpus), 500):
        yield scrape(gpus[i : i + 500], T0 + HOUR + (i // 500) * 1_000_000)
    for k in range(DEEP_SCRAPES):
        yield scrape(gpus[:DEEP], T0 + k * 30 * S)


def fill(store: Store, gpus: list[Gpu], threads: int) -> float:
    """Write the fleet through `store.write`; return seconds."""
    started = time.monotonic()
    with ThreadPoolExecutor(threads, thread_name_prefix="fleet-load") as pool:
        for _ in pool.map(store.write, load_batches(gpus)):
            pass
    return round(time.monotonic() - started, 1)


def sqlite_store(gpus: list[Gpu]) -> tuple[Path, float | None]:
    """The cached SQLite file of this fleet, filled first when missing; (path, fill s)."""
    path = CACHE / f"fleet-sqlite-{len(gpus)}g-v{SQLITE_VERSION}.db"
    if path.exists():
        return path, None
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".filling")
    for leftover in CACHE.glob(partial.name + "*"):
        leftover.unlink()
    with open_store(f"sqlite:{partial}") as store:
        seconds = fill(store, gpus, 1)
    with sqlite3.connect(partial) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
    partial.rename(path)
    return path, seconds


def influx_root(gpus: int) -> Path:
    """The cached InfluxDB data folder of a fleet of `gpus` (TSI-indexed, as InfluxServer)."""
    return CACHE / f"fleet-influx-{gpus}g-v{INFLUX_VERSION}-tsi1"


def influx_server(gpus: list[Gpu]) -> tuple[InfluxServer, dict[str, str], float | None]:
    """A started InfluxDB whose data folder (cached) holds the fleet; (server, opts, fill s).

    The fleet is filled and compacted once (`settle`), so every run reads the state a
    server reaches by itself a few hours after such writes: no cache to replay at start,
    no full compaction starting inside a measurement (the first run after 4 h cold spent
    11 % of influxd's CPU on one, 2026-12-03), one TSM file per shard.
    """
    root = influx_root(len(gpus))
    done = root / "loaded"
    fill_s = None
    if not done.exists():
        server = InfluxServer(influxd_path(), root, start_timeout_s=900)
        server.start()
        try:
            server.influxql('DROP DATABASE "fleet"')
            server.create_database("fleet")
            with open_store("influx", **_opts(server)) as store:
                fill_s = fill(store, gpus, 2)
        finally:
            server.stop()
        done.write_text(json.dumps({"fill_s": fill_s}))
    state = json.loads(done.read_text())
    if not state.get("compacted"):
        settle(root)
        done.write_text(json.dumps({**state, "compacted": True}))
    server = InfluxServer(influxd_path(), root, start_timeout_s=900)
    server.start()
    return server, _opts(server), fill_s


def _opts(server: InfluxServer) -> dict[str, str]:
    return {"url": server.url, "org": "gputel", "bucket": "fleet", "token": "unused:unused"}


def settle(root: Path, timeout_s: float = 900) -> None:
    """Write the cached fleet's cache to TSM and compact each shard into one file.

    influxd does both by itself once a shard is no longer written (after 10 min and 4 h
    by default); a server started with both at 1 s does them now.
    """
    server = InfluxServer(influxd_path(), root, start_timeout_s=900, snapshot_cold_s=1,
                          compact_cold_s=1)  # fmt: skip
    server.start()
    try:
        server.wait_compacted(timeout_s, poll_s=1)
    finally:
        server.stop()


def _http_json(gw: Proc) -> Callable[[str], Any]:
    """GET a path of the gateway and parse its JSON."""
    import urllib.request

    base = gw.health_url.rsplit("/", 1)[0]

    def fetch(path: str) -> Any:
        with urllib.request.urlopen(base + path, timeout=60) as resp:
            return json.load(resp)

    return fetch


def _pages(fetch: Callable[[str], Any], path: str, most: int = 400) -> list[str]:
    """Every page URL of a list endpoint, found by following `next_cursor` from the first."""
    import urllib.parse

    sep = "&" if "?" in path else "?"
    out = [path]
    while len(out) < most:
        token = fetch(out[-1])["next_cursor"]
        if token is None:
            break
        out.append(f"{path}{sep}cursor={urllib.parse.quote(token)}")
    return out


def telemetry_paths(gpus: list[Gpu], rng: random.Random) -> list[str]:
    """500 one-hour telemetry pages (1,000 of 1,200 points) of the deep GPUs."""
    windows = [T0 + k * 30 * S for k in range(DEEP_SCRAPES // 2)]
    return [
        f"/api/v1/gpus/{rng.choice(gpus[:DEEP]).uuid}/telemetry?start_time={t // S}"
        f"&end_time={(t + HOUR) // S}&limit=1000"
        for t in (rng.choice(windows) for _ in range(500))
    ]


def endpoints(fetch: Callable[[str], Any], gpus: list[Gpu]) -> dict[str, list[str]]:
    """Request paths per measured endpoint (`fetch` GETs a path's JSON, to find the pages)."""
    rng = random.Random(5)
    telemetry = telemetry_paths(gpus, rng)
    return {
        "gpus": _pages(fetch, "/api/v1/gpus?limit=1000"),
        "hosts": _pages(fetch, "/api/v1/hosts"),
        "metrics": ["/api/v1/metrics"],
        "gpu_detail": [f"/api/v1/gpus/{rng.choice(gpus).uuid}" for _ in range(2000)],
        "telemetry_1h": telemetry,
        "gpus_model_h100": ["/api/v1/gpus?model=h100&limit=1000"],
    }


def endpoints_in_process(opts: dict[str, str], gpus: list[Gpu]) -> dict[str, list[str]]:
    """`endpoints` of the InfluxDB store `opts` names, found through an in-process app."""
    from gateway.app import create_app
    from gateway.config import GatewayConfig

    config = GatewayConfig(store="influx", influx_url=opts["url"], influx_org=opts["org"],
                           influx_bucket=opts["bucket"], influx_token=opts["token"],
                           catalog_cache_s=0)  # fmt: skip
    client = create_app(config).test_client()
    return endpoints(lambda path: client.get(path).get_json(), gpus)


def gateway(store_args: list[str], tmp: Path, name: str) -> Proc:
    """A gateway on the store: 2 workers, the store's default threads, no GPU-list cache."""
    port = free_port()
    argv = [str(BIN / "gputel-gateway"), *store_args, "--bind", f"127.0.0.1:{port}",
            "--workers", "2", "--catalog-cache-s", "0"]  # fmt: skip
    return Proc(name, argv, tmp / f"{name}.log", f"http://127.0.0.1:{port}/healthz")


def measure(
    gw: Proc, paths: list[str], seconds: float, tmp: Path, connections: int, store_pid: int | None
) -> dict[str, Any]:
    """One wrk run; with the CPU the gateway and the store process spent per request.

    On a machine other tenants keep busy the latencies include waiting for a core; the CPU
    per request does not, and bounds what a quiet machine can serve (2 cores / its sum).
    """
    assert gw.proc is not None
    trees = {"gateway": descendants(gw.proc.pid), "store": [store_pid] if store_pid else []}
    cpu = CpuMeter(trees)
    cpu.start()
    started = time.monotonic()
    figures = WrkLoad(gw.health_url.rsplit("/", 1)[0], paths, seconds, tmp, connections).result()
    wall = time.monotonic() - started
    cores = cpu.stop()
    figures |= {k: cores[k] for k in ("gateway", "store", "machine_busy_cores")}
    if figures["requests"]:
        per = wall * 1000 / figures["requests"]
        figures["cpu_ms_per_request"] = {
            "gateway": round(cores["gateway"] * per, 2), "store": round(cores["store"] * per, 2),
        }  # fmt: skip
    return figures


def serve_and_measure(
    store_args: list[str],
    gpus: list[Gpu],
    seconds: float,
    tmp: Path,
    name: str,
    store_pid: int | None = None,
) -> dict[str, Any]:
    """Start a gateway on the store and load each endpoint; figures per endpoint."""
    gw = gateway(store_args, tmp, name).start()
    try:
        todo = endpoints(_http_json(gw), gpus)
        out: dict[str, Any] = {"pages": {k: len(v) for k, v in todo.items()}}
        for endpoint, paths in todo.items():
            warm(gw, paths[:200])
            print(f"fleet_bench: {name} {endpoint}", file=sys.stderr, flush=True)
            figures = {
                f"connections_{n}": measure(gw, paths, seconds, tmp, n, store_pid)
                for n in (QUIET_CONNECTIONS, CONNECTIONS)
            }
            target = TARGETS_MS.get(endpoint)
            if target is not None and (endpoint != "telemetry_1h" or name == "influx"):
                n = CONNECTIONS if endpoint == "telemetry_1h" else QUIET_CONNECTIONS
                judged = figures[f"connections_{n}"]
                met = judged["p99_ms"] <= target and not judged["errors"]
                figures["target"] = {"p99_ms": target, "connections": n, "met": met}
            out[endpoint] = figures
        return out
    finally:
        gw.terminate(15)


def run(gpus: int = 100_000, seconds: float = 10.0, stream_gpus: int = 10_000) -> dict[str, Any]:
    """Fleet figures per store; see the module docstring (`stream_gpus` 0: the gateway alone)."""
    the_fleet = fleet(gpus)
    result: dict[str, Any] = {
        "gpus": gpus, "metrics": len(METRICS), "points": gpus * len(METRICS)
        + DEEP * DEEP_SCRAPES * len(METRICS), "connections": CONNECTIONS, "seconds": seconds,
        "loadavg_at_start": os.getloadavg(),
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gputel-fleet-bench-") as tmpdir:
        tmp = Path(tmpdir)
        db, fill_s = sqlite_store(the_fleet)
        result["sqlite"] = {"fill_s": fill_s}
        result["sqlite"] |= serve_and_measure(["--store", f"sqlite:{db}"], the_fleet, seconds,
                                              tmp, "sqlite")  # fmt: skip
        server, opts, fill_s = influx_server(the_fleet)
        try:
            args = ["--store", "influx", "--influx-url", opts["url"], "--influx-org", "gputel",
                    "--influx-bucket", opts["bucket"]]  # fmt: skip
            os.environ.setdefault("GPUTEL_INFLUX_TOKEN", opts["token"])
            result["influx"] = {"fill_s": fill_s}
            result["influx"] |= serve_and_measure(
                args, the_fleet, seconds, tmp, "influx", server.pid
            )
        finally:
            server.stop()
        try:  # the gateway figures above are kept when this part fails
            if stream_gpus:
                result["collector"] = fleet_stream.run(tmp, stream_gpus)
        except Exception as exc:
            result["collector"] = {"error": repr(exc)}
    result["loadavg_at_end"] = os.getloadavg()
    return result


if __name__ == "__main__":
    # python -m bench.fleet_bench [GPUS [SECONDS [STREAM_GPUS]]]  (STREAM_GPUS 0: no collector part)
    gpus_, seconds_, stream_ = (sys.argv[1:] + ["100000", "10", "10000"][len(sys.argv) - 1 :])[:3]
    print(json.dumps(run(int(gpus_), float(seconds_), int(stream_)), indent=2))

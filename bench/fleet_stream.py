"""Collector throughput with the GPU catalog and without it, in the same run (fleet_bench).

A broker topic holds `gpus` GPUs x 10 metrics x SCRAPES scrapes INTERVAL_S apart, in
1,000-point records (100 GPUs each, the GPU's partition fixed): every GPU is new in the first
scrape, and at the 60-s catalog granularity each gets one more catalog record at the fourth
scrape. One collector (`bench.collector_bench.drain`) drains the topic into a fresh database
with the catalog on, another into a fresh database with it off; RUNS times each, in ABBA
order, so drift of the shared machine hits both. The figure is the median of each.

Other tenants of the machine move single runs by up to 2x, so each run also records the CPU
the write path spent per point: this process (the collector: decode, line protocol or SQL,
the catalog's bookkeeping) plus, for InfluxDB, the influxd process (parsing and storing
the catalog's lines too). CPU per point hardly depends on how long the process waited
for a core, so `cpu_ratio` (without / with) shows what the catalog costs where the
wall-clock ratio is blurred by the neighbours; it is also reported per process, and per
ABBA pair (`pair_cpu_ratios`: the two drains of a pair ran next to each other). After each
drain the run waits until influxd is idle (`settle`; its cold cache is written out after
1 s here), so the TSM writes and compactions a run caused are counted in that run, not in
the next one, and the database is dropped. influxd's share alone is measured apart
(`influxd_write_cost`): the same stream's bodies, with and without their catalog lines,
posted straight to /api/v2/write, influxd's CPU per point, alternating, RUNS times.
"""

from __future__ import annotations

import gzip
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3

from bench.collector_bench import PARTITIONS, TOPIC, drain
from bench.e2e_bench import cpu_seconds
from bench.fleet_data import T0, fleet, scrape
from collector.config import CollectorConfig
from gputel import gc_policy
from proto.codec import encode
from proto.gen import walbroker_pb2 as pb
from proto.gen import walbroker_pb2_grpc as pb_grpc
from store import catalog as catalog_mod
from store import influx_catalog, open_store
from store.lineprotocol import LineProtocolEncoder
from tests.fixtures.broker import BrokerProcess
from tests.fixtures.influx import InfluxServer, influxd_path
from walbroker.client import channel

SCRAPES = 6
# Both stores as the collector opens them (its --catalog-granularity-s default).
GRANULARITY_S = CollectorConfig(broker="-", store="-").catalog_granularity_s
INTERVAL_S = 20
RUNS = 4


def preload(address: str, gpus: int) -> int:
    """Publish the stream; return its number of points."""
    the_fleet = fleet(gpus, seed=99)
    reqs, points = [], 0
    for k in range(SCRAPES):
        for i in range(0, gpus, 100):
            b = scrape(the_fleet[i : i + 100], T0 + k * INTERVAL_S * 10**9)
            reqs.append(
                pb.PublishRequest(request_id=len(reqs), topic=TOPIC,
                                  partition=(i // 100) % PARTITIONS, payload=encode(b),
                                  count=len(b))
            )  # fmt: skip
            points += len(b)
    with channel(address) as ch:
        acks = list(pb_grpc.BrokerStub(ch).Publish(iter(reqs), timeout=300))
    assert all(a.status.code == 0 for a in acks), "preload refused"
    return points


def _process_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def settle(server_cpu: Callable[[], float], quiet_s: float = 1.0, most_s: float = 60.0) -> None:
    """Wait until the server spends under 3 % of a core for `quiet_s` (at most `most_s`).

    influxd writes its cache to TSM files and compacts them in the background; without
    this, that work for one run's database was counted in the next run's (single runs moved
    by up to 2x). With the server's cold-cache snapshot at 1 s (`InfluxServer`), waiting
    here counts a run's whole write cost in that run.
    """
    deadline = time.monotonic() + most_s
    last = server_cpu()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = server_cpu()
        if now - last < 0.03 * quiet_s:
            return
        last = now


def _drains(
    address: str,
    points: int,
    opener: Any,
    kind: str,
    server_cpu: Callable[[], float],
    drop: Callable[[str], None] = lambda name: None,
) -> dict[str, Any]:
    """Alternate catalog on/off drains into fresh databases; medians and every run.

    `drop(name)` removes a database once measured, so the server's memory (and the time
    its garbage collector takes) does not grow run after run.
    """
    variants = ("without_catalog", "with_catalog")
    runs: dict[str, list[float]] = {v: [] for v in variants}
    # CPU per point split by process: this one (the collector) and the store's server.
    split: dict[str, dict[str, list[float]]] = {
        v: {"collector": [], "server": []} for v in variants
    }
    settle(server_cpu)  # the server's start-up and the previous store's runs
    # The collector process runs with gputel's GC policy (collector.cli), so do these drains:
    # under Python's default gen-0 threshold, full collections walk the catalog's records of
    # every GPU over and over (offline on one run's flushes: ratio 0.84-0.90 against 0.95).
    gc_policy.tune()
    for n in range(RUNS):
        # ABBA order: drift of the machine (and of the store's state) over the run falls on
        # both variants alike instead of always on the second one.
        for variant in variants if n % 2 == 0 else variants[::-1]:
            with opener(f"{variant}-{n}", variant == "with_catalog") as store:
                own, server = _process_cpu_s(), server_cpu()
                got = drain(address, store, f"{kind}-{variant}-{n}", points, 5_000)
            settle(server_cpu)
            own, server = _process_cpu_s() - own, server_cpu() - server
            drop(f"{variant}-{n}")
            runs[variant].append(got["points_per_s"])
            split[variant]["collector"].append(round(own / points * 1e6, 2))
            split[variant]["server"].append(round(server / points * 1e6, 2))
    return _summary(points, runs, split)


def _summary(
    points: int, runs: dict[str, list[float]], split: dict[str, dict[str, list[float]]]
) -> dict[str, Any]:
    """Medians, ratios (without / with) and every run's figures."""
    cpu = {
        v: [round(a + b, 2) for a, b in zip(p["collector"], p["server"], strict=True)]
        for v, p in split.items()
    }
    with_, without = (statistics.median(runs[v]) for v in ("with_catalog", "without_catalog"))
    cpu_with, cpu_without = (statistics.median(cpu[v]) for v in ("with_catalog", "without_catalog"))
    # The two drains of a pair ran next to each other: their ratio drifts least with the
    # machine's load.
    pairs = [
        round(a / b, 3) for a, b in zip(cpu["without_catalog"], cpu["with_catalog"], strict=True)
    ]
    return {
        "points": points, "runs_points_per_s": runs, "runs_cpu_us_per_point": cpu,
        "with_catalog_points_per_s": round(with_), "without_catalog_points_per_s": round(without),
        "ratio": round(with_ / without, 3), "target_ratio": 0.9, "met": with_ >= 0.9 * without,
        "cpu_us_per_point": {"with_catalog": cpu_with, "without_catalog": cpu_without},
        "cpu_ratio": round(cpu_without / cpu_with, 3),
        "pair_cpu_ratios": pairs, "pair_cpu_ratio_median": statistics.median(pairs),
        "runs_cpu_us_per_point_by_process": split,
        "cpu_us_per_point_by_process": {
            v: {p: statistics.median(xs) for p, xs in split[v].items()} for v in split
        },
    }  # fmt: skip


def _bodies(gpus: int, with_catalog: bool) -> list[bytes]:
    """The stream as line-protocol bodies of 500 GPUs, as the InfluxDB store builds them."""
    the_fleet, encoder = fleet(gpus, seed=99), LineProtocolEncoder()
    tracker = catalog_mod.CatalogTracker()
    out = []
    for k in range(SCRAPES):
        for i in range(0, gpus, 500):
            b = scrape(the_fleet[i : i + 500], T0 + k * INTERVAL_S * 10**9)
            body = encoder.encode(b)
            if with_catalog and (update := tracker.updates(b)):
                tracker.confirm(update)
                body += b"\n" + influx_catalog.encode(update)
            out.append(gzip.compress(body, 1, mtime=0))
    return out


def influxd_write_cost(server: InfluxServer, gpus: int, points: int) -> dict[str, Any]:
    """influxd's CPU per point for the stream with and without catalog lines (fresh dbs)."""
    pid = server.pid
    assert pid is not None
    pool = urllib3.PoolManager()
    bodies = {v: _bodies(gpus, v == "with_catalog") for v in ("without_catalog", "with_catalog")}
    cpu: dict[str, list[float]] = {v: [] for v in bodies}
    for n in range(RUNS):
        for variant in list(bodies) if n % 2 == 0 else list(bodies)[::-1]:
            todo = bodies[variant]
            db = server.create_database(f"direct_{variant}_{n}").bucket
            before = cpu_seconds(pid)
            for body in todo:
                resp = pool.request(
                    "POST", f"{server.url}/api/v2/write?bucket={db}&precision=ns", body=body,
                    headers={"Content-Encoding": "gzip", "Authorization": "Token -"},
                )  # fmt: skip
                assert resp.status == 204, resp.data[:200]
            settle(lambda: cpu_seconds(pid))
            cpu[variant].append(round((cpu_seconds(pid) - before) / points * 1e6, 2))
            server.influxql(f'DROP DATABASE "{db}"')
    with_, without = (statistics.median(cpu[v]) for v in ("with_catalog", "without_catalog"))
    return {"runs_cpu_us_per_point": cpu, "cpu_ratio": round(without / with_, 3)}


def run(
    tmp: Path, gpus: int, stores: tuple[str, ...] = ("sqlite", "influx"), direct: bool = True
) -> dict[str, Any]:
    """Both stores' figures (or those of `stores`); `direct`: influxd_write_cost too."""
    # Topics are not created on first use: the telemetry topic and its dead-letter topic.
    topics = ["--topic", f"{TOPIC}:{PARTITIONS}", "--topic", f"{TOPIC}.dlq:4"]
    broker = BrokerProcess(tmp / "broker", *topics)
    broker.start()
    server = InfluxServer(influxd_path(), tmp / "stream-influx", snapshot_cold_s=1)
    try:
        points = preload(broker.address, gpus)

        def sqlite(name: str, catalog: bool) -> Any:
            return open_store(f"sqlite:{tmp / name}.db", GRANULARITY_S, catalog)

        out: dict[str, Any] = {"gpus": gpus, "scrapes": SCRAPES, "interval_s": INTERVAL_S}
        if "sqlite" in stores:
            out["sqlite"] = _drains(broker.address, points, sqlite, "sqlite", lambda: 0.0)
        if "influx" not in stores:
            return out
        server.start()

        def influx(name: str, catalog: bool) -> Any:
            opts = server.create_database(name.replace("-", "_")).store_opts()
            return open_store("influx", GRANULARITY_S, catalog, **opts)

        influxd = server.pid
        assert influxd is not None

        def drop(name: str) -> None:
            server.influxql(f'DROP DATABASE "{name.replace("-", "_")}"')

        out["influx"] = _drains(
            broker.address, points, influx, "influx", lambda: cpu_seconds(influxd), drop
        )
        if direct:
            out["influx"]["influxd_write_cost"] = influxd_write_cost(server, gpus, points)
        return out
    finally:
        server.stop()
        broker.stop()


if __name__ == "__main__":
    import json
    import sys
    import tempfile

    # python -m bench.fleet_stream [GPUS] [sqlite,influx] [direct|nodirect] [RUNS]
    args = sys.argv[1:]
    RUNS = int(args[3]) if len(args) > 3 else RUNS
    n = int(args[0]) if args else 10_000
    which = tuple(args[1].split(",")) if len(args) > 1 else ("sqlite", "influx")
    with tempfile.TemporaryDirectory(prefix="gputel-fleet-stream-") as d:
        result = run(Path(d), n, which, args[2:3] != ["nodirect"])
    print(json.dumps(result, indent=1))

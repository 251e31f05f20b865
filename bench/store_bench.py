"""Store write throughput: points/s into SQLite and InfluxDB in batches, and line-protocol share.

`run()` is called by `bench/run.py` (the `make bench` driver); `python -m bench.store_bench`
prints the result as JSON. InfluxDB: pass url/org/bucket/token, or let it start a throw-away
InfluxDB 1.8.10 (needs `scripts/influxdb.sh install`).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from proto.batch import Gpu, PointBatch
from store.influx import InfluxStore
from store.lineprotocol import LineProtocolEncoder
from store.sqlite import SqliteStore

METRICS = [
    "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_DEC_UTIL", "DCGM_FI_DEV_ENC_UTIL", "DCGM_FI_DEV_SM_CLOCK",
    "DCGM_FI_DEV_MEM_CLOCK",
]  # fmt: skip
T0 = 1_700_000_000_000_000_000


def batches(points: int, batch_size: int, hosts: int = 32) -> Iterator[PointBatch]:
    """Yield batches of `batch_size` points: hosts x 8 GPUs x 10 metrics per timestamp."""
    gpus = [
        Gpu(uuid=f"GPU-{h:02d}{i}-bench", hostname=f"host-{h:02d}", gpu=i, device=f"nvidia{i}",
            model="NVIDIA H100 80GB HBM3")
        for h in range(hosts) for i in range(8)
    ]  # fmt: skip
    per_tick = len(gpus) * len(METRICS)
    made = 0
    while made < points:
        b = PointBatch(gpus=gpus, metrics=METRICS)
        for k in range(made, min(made + batch_size, points)):
            tick, slot = divmod(k, per_tick)
            g, m = divmod(slot, len(METRICS))
            b.gpu_index.append(g)
            b.metric_index.append(m)
            b.time_ns.append(T0 + tick * 1_000_000_000)
            b.value.append(float(k % 100) + 0.5)
            b.source_time_ns.append(T0 + tick * 1_000_000_000 - 7)
        made += len(b)
        yield b


def _timed_writes(write: Callable[[PointBatch], None], todo: list[PointBatch]) -> float:
    start = time.perf_counter()
    for b in todo:
        write(b)
    return time.perf_counter() - start


def bench_sqlite(todo: list[PointBatch], path: Path) -> dict[str, Any]:
    """Write every batch into a fresh SQLite file and return points/s."""
    store = SqliteStore(path)
    try:
        seconds = _timed_writes(store.write, todo)
    finally:
        store.close()
    points = sum(len(b) for b in todo)
    return {"points": points, "seconds": round(seconds, 3), "points_per_s": round(points / seconds)}


def bench_influx(todo: list[PointBatch], opts: dict[str, str]) -> dict[str, Any]:
    """Write every batch into InfluxDB and return points/s and the line-protocol share of time."""
    store = InfluxStore(opts["url"], opts["org"], opts["bucket"], opts["token"])
    encoder = LineProtocolEncoder()
    encode_s = 0.0

    def timed_encode(batch: PointBatch) -> bytes:
        nonlocal encode_s
        start = time.perf_counter()
        body = encoder.encode(batch)
        encode_s += time.perf_counter() - start
        return body

    store._encoder.encode = timed_encode  # type: ignore[method-assign]
    try:
        seconds = _timed_writes(store.write, todo)
    finally:
        store.close()
    points = sum(len(b) for b in todo)
    return {
        "points": points, "seconds": round(seconds, 3), "points_per_s": round(points / seconds),
        "line_protocol_s": round(encode_s, 3),
        "line_protocol_share": round(encode_s / seconds, 3),
        "line_protocol_us_per_point": round(encode_s / points * 1e6, 2),
    }  # fmt: skip


def _with_temp_influx(todo: list[PointBatch], root: Path) -> dict[str, Any]:
    from tests.fixtures.influx import InfluxServer, influxd_path

    server = InfluxServer(influxd_path(), root)
    server.start()
    try:
        return bench_influx(todo, server.create_database("bench").store_opts())
    finally:
        server.stop()


def run(
    points: int = 200_000,
    batch_size: int = 5_000,
    influx_opts: dict[str, str] | None = None,
    stores: tuple[str, ...] = ("sqlite", "influx"),
) -> dict[str, Any]:
    """Measure write throughput into each store; returns {"sqlite": {...}, "influx": {...}}."""
    todo = list(batches(points, batch_size))
    result: dict[str, Any] = {"batch_size": batch_size}
    with tempfile.TemporaryDirectory(prefix="gputel-store-bench-") as tmp:
        if "sqlite" in stores:
            result["sqlite"] = bench_sqlite(todo, Path(tmp) / "bench.db")
        if "influx" in stores:
            if influx_opts:
                result["influx"] = bench_influx(todo, influx_opts)
            else:
                result["influx"] = _with_temp_influx(todo, Path(tmp) / "influxdb")
    return result


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))

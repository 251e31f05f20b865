"""Collector throughput: points/s from a real broker into SQLite and into InfluxDB.

One collector (this process runs the collector loop, the broker and InfluxDB run as their
own processes) drains a topic preloaded with `points` points in records of 1,000, writing
batches of `batch_size`, until every point is stored and committed. The clock runs from
`Collector.run` to the last commit. Time spent decoding records, preparing batches
(`Store.prepare`: for InfluxDB validation, line protocol and gzip), writing them
(`Store.write_prepared`, on the collector's writer thread) and, for InfluxDB, building line
protocol is measured by wrapping those functions, and reported as shares of the wall time.
Decoding and preparing run on the collector loop's thread while the writer thread writes
the previous batch, so the shares of the two threads overlap and can add up to more than 1.

`run()` is called by the `make bench` driver; `python -m bench.collector_bench` prints JSON.
Needs `scripts/influxdb.sh install` for the InfluxDB part.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry

import proto.codec
from bench.store_bench import batches
from collector.config import CollectorConfig
from collector.metrics import CollectorMetrics
from collector.runner import Collector
from proto.codec import encode
from proto.gen import walbroker_pb2 as pb
from proto.gen import walbroker_pb2_grpc as pb_grpc
from store import Store, open_store
from tests.fixtures.broker import BrokerProcess
from walbroker.client import channel

TOPIC = "telemetry"
RECORD_POINTS = 1_000
PARTITIONS = 4

F = TypeVar("F", bound=Callable[..., Any])


def preload(address: str, points: int) -> None:
    """Append `points` points to the topic in records of RECORD_POINTS, round-robin."""
    reqs = [
        pb.PublishRequest(
            request_id=i, topic=TOPIC, partition=i % PARTITIONS, payload=encode(b), count=len(b)
        )
        for i, b in enumerate(batches(points, RECORD_POINTS))
    ]
    with channel(address) as ch:
        acks = list(pb_grpc.BrokerStub(ch).Publish(iter(reqs), timeout=120))
    assert all(a.status.code == 0 for a in acks), "preload refused"


class Timer:
    """Accumulates the time spent in wrapped functions (summed over threads)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()

    def wrap(self, fn: F) -> F:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds += time.perf_counter() - start

        return timed  # type: ignore[return-value]


def drain(address: str, store: Store, group: str, points: int, batch_size: int) -> dict[str, Any]:
    """Run one collector until `points` points are stored and committed; return the numbers."""
    config = CollectorConfig(
        broker=address, store="bench", group=group, batch_size=batch_size, metrics_listen=""
    )
    registry = CollectorRegistry()
    c = Collector(config, store, CollectorMetrics(registry))
    decode_t, prepare_t, write_t, lp_t = Timer(), Timer(), Timer(), Timer()
    original_decode = proto.codec.decode
    proto.codec.decode = decode_t.wrap(original_decode)
    store.prepare = prepare_t.wrap(store.prepare)  # type: ignore[method-assign]
    store.write_prepared = write_t.wrap(store.write_prepared)  # type: ignore[method-assign]
    encoder = getattr(store, "_encoder", None)
    if encoder is not None:
        encoder.encode = lp_t.wrap(encoder.encode)
    loop = threading.Thread(target=c.run, name="bench-collector")
    start = time.perf_counter()
    try:
        loop.start()
        name = "gpu_telemetry_collector_messages_flushed_total"
        while (registry.get_sample_value(name) or 0) < points and loop.is_alive():
            time.sleep(0.01)
        seconds = time.perf_counter() - start
    finally:
        c.stop()
        loop.join()
        proto.codec.decode = original_decode
    out = {
        "points": points, "seconds": round(seconds, 3), "points_per_s": round(points / seconds),
        "decode_share": round(decode_t.seconds / seconds, 3),
        "prepare_share": round(prepare_t.seconds / seconds, 3),
        "store_write_share": round(write_t.seconds / seconds, 3),
    }  # fmt: skip
    if encoder is not None:
        out["line_protocol_share"] = round(lp_t.seconds / seconds, 3)
        out["line_protocol_us_per_point"] = round(lp_t.seconds / points * 1e6, 2)
    return out


def _influx(root: Path, address: str, points: int, batch_size: int) -> dict[str, Any]:
    from tests.fixtures.influx import InfluxServer, influxd_path

    server = InfluxServer(influxd_path(), root)
    server.start()
    try:
        opts = server.create_database("bench").store_opts()
        with open_store("influx", **opts) as store:
            return drain(address, store, "bench-influx", points, batch_size)
    finally:
        server.stop()


def run(
    points: int = 300_000,
    batch_size: int = 5_000,
    stores: tuple[str, ...] = ("sqlite", "influx"),
) -> dict[str, Any]:
    """Measure one collector's throughput into each store; {"sqlite": {...}, "influx": {...}}."""
    result: dict[str, Any] = {"batch_size": batch_size, "record_points": RECORD_POINTS}
    with tempfile.TemporaryDirectory(prefix="gputel-collector-bench-") as tmp:
        broker = BrokerProcess(
            Path(tmp) / "broker", "--topic", f"{TOPIC}:{PARTITIONS}", "--topic", f"{TOPIC}.dlq:4"
        )
        broker.start()
        try:
            preload(broker.address, points)
            if "sqlite" in stores:
                with open_store(f"sqlite:{Path(tmp) / 'bench.db'}") as store:
                    result["sqlite"] = drain(
                        broker.address, store, "bench-sqlite", points, batch_size
                    )
            if "influx" in stores:
                root = Path(tmp) / "influxdb"
                result["influx"] = _influx(root, broker.address, points, batch_size)
        finally:
            broker.stop()
    return result


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))

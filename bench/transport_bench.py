"""walbroker vs Kafka: the same pipeline, the same load, one after the other in one run.

CSV -> streamer -> {walbroker (fsync on) | Apache Kafka 4.4, 1 node (KRaft)} -> collector ->
SQLite -> gateway, every component its own process on loopback (the e2e harness), the
streamer paced at `rate` points/s (`--rate`). Measured over a window after a warm-up, as
`bench.e2e_bench` measures (its probe, meters and scrapes are reused):

- `stored_points_per_s`: the collector's flushed counter (written AND committed) per second;
- `latency`: processing time -> visible through the gateway, p50/p99 of every point of the
  sampled GPUs (an upper bound, resolution `poll_cycle_ms`);
- `cpu_cores`: each process tree's utime+stime over the window (the Kafka JVM included);
- `core_s_per_million_points`: what each part costs per million points stored: the broker
  (walbroker's process, or the Kafka JVM), the clients (streamer + collector: gRPC streams
  vs librdkafka with transactions) and the two together, the transport's whole bill;
- `accounting`: after the streamer stops and the collector drained, the store's count must
  equal the streamer's committed progress and the collector's flushed counter.

`python -m bench.transport_bench [seconds] [rate]` prints the JSON; `make bench` runs it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.e2e_bench import (
    FLUSHED,
    PARTITIONS,
    PUBLISHED,
    TOPIC,
    CpuMeter,
    LatencyProbe,
    counter,
    descendants,
    metrics_url,
    sample_gpus,
    scrape,
    window_latencies,
)
from scripts import gen_dcgm
from store import open_store
from tests.e2e.pipeline import KafkaTarget, Pipeline, Proc, wait_for
from tests.fixtures.broker import BrokerProcess
from tests.kafka_cluster import KafkaCluster

TRANSPORTS = ("walbroker", "kafka1")
BROKER_PARTS = ("broker",)
CLIENT_PARTS = ("streamer", "collector")


@contextmanager
def broker_of(kind: str, tmp: Path) -> Iterator[tuple[BrokerProcess | KafkaTarget, list[int]]]:
    """A running broker of `kind` with the telemetry topics, and the pids that serve it."""
    if kind == "walbroker":
        broker = BrokerProcess(
            tmp / "broker", "--topic", f"{TOPIC}:{PARTITIONS}", "--topic", f"{TOPIC}.dlq:4"
        ).start()
        try:
            assert broker.proc is not None
            yield broker, [broker.proc.pid]
        finally:
            broker.stop()
        return
    cluster = KafkaCluster(tmp / "kafka", 1)
    cluster.start()
    try:
        yield KafkaTarget(cluster, PARTITIONS), jvm_pids(tmp / "kafka")
    finally:
        cluster.stop()


def jvm_pids(directory: Path) -> list[int]:
    """The Kafka JVMs whose command line names `directory` (the cluster's node configs)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "kafka.Kafka" in cmd and str(directory) in cmd:
            found.append(int(entry.name))
    return found


def run_transport(
    kind: str, duration_s: float, rate: int, hosts: int, warmup_s: float, probe_gpus: int
) -> dict[str, Any]:
    """The pipeline on one transport for `duration_s` seconds at `rate` points/s (SQLite)."""
    with tempfile.TemporaryDirectory(prefix=f"gputel-transport-bench-{kind}-") as tmpdir:
        tmp = Path(tmpdir)
        csv = tmp / "dcgm.csv"
        with open(csv, "w", encoding="utf-8", newline="") as f:
            gen_dcgm.write(f, 11, hosts, 8, 10)
        with broker_of(kind, tmp) as (broker, broker_pids):
            db = tmp / "store.db"
            pipe = Pipeline(tmp, broker, ["--store", f"sqlite:{db}"], csv)
            try:
                return _measure(pipe, broker_pids, f"sqlite:{db}", duration_s, rate, warmup_s,
                                probe_gpus)  # fmt: skip
            finally:
                pipe.stop_all()


def _measure(
    pipe: Pipeline, broker_pids: list[int], spec: str, duration_s: float, rate: int,
    warmup_s: float, probe_gpus: int,
) -> dict[str, Any]:  # fmt: skip
    collector = pipe.collector("--flush-ms", "1000").start()
    gateway = pipe.start_gateway()
    streamer = pipe.streamer("--forever", "--rate", str(rate)).start()
    base = gateway.health_url.rsplit("/", 1)[0]
    probe = LatencyProbe(base, sample_gpus(pipe, probe_gpus))
    probe.start()
    procs = {"streamer": streamer, "collector": collector, "gateway": gateway}
    tree = {n: descendants(p.proc.pid) for n, p in procs.items() if p.proc is not None}
    tree["broker"] = broker_pids
    tree["bench_probe"] = [os.getpid()]
    cpu = CpuMeter(tree)
    time.sleep(warmup_s)
    s0 = counter(scrape(metrics_url(collector)), FLUSHED)
    p0 = counter(scrape(metrics_url(streamer)), PUBLISHED)
    w0, t0 = time.time_ns(), time.monotonic()
    cpu.start()
    time.sleep(duration_s)
    cores = cpu.stop()
    s1 = counter(scrape(metrics_url(collector)), FLUSHED)
    p1 = counter(scrape(metrics_url(streamer)), PUBLISHED)
    w1, seconds = time.time_ns(), time.monotonic() - t0
    stored_per_s = (s1 - s0) / seconds
    out: dict[str, Any] = {
        "offered_points_per_s": rate, "window_s": round(seconds, 2),
        "published_points_per_s": round((p1 - p0) / seconds),
        "stored_points_per_s": round(stored_per_s),
        "loadavg_1m": os.getloadavg()[0],
    }  # fmt: skip
    stopped = time.monotonic()
    out["streamer_exit_code"] = streamer.terminate(60)
    drained = wait_for(lambda: pipe.lag() == 0, 120, 0.2)
    out["drain_s"] = round(time.monotonic() - stopped, 2)
    wait_for(lambda: all(probe.newest[u] >= w1 for u in probe.uuids), 15, 0.1)
    probe.stop()
    out["latency"] = window_latencies(probe, base, w0, w1)
    out["cpu_cores"] = cores
    out["core_s_per_million_points"] = _cost(cores, stored_per_s)
    out["accounting"] = _accounting(pipe, streamer, collector, spec, drained)
    return out


def _cost(cores: dict[str, float], points_per_s: float) -> dict[str, float | None]:
    """CPU seconds per million points stored: broker, clients, both."""
    if points_per_s <= 0:
        return {"broker": None, "clients": None, "transport_total": None}
    per_m = 1e6 / points_per_s
    broker = sum(cores.get(n, 0.0) for n in BROKER_PARTS) * per_m
    clients = sum(cores.get(n, 0.0) for n in CLIENT_PARTS) * per_m
    return {
        "broker": round(broker, 2),
        "clients": round(clients, 2),
        "transport_total": round(broker + clients, 2),
    }


def _progress(pipe: Pipeline) -> int:
    """The streamers' committed progress (rows = points) over the topic's partitions."""
    if isinstance(pipe.broker, KafkaTarget):
        from confluent_kafka import Consumer, TopicPartition

        target = pipe.broker
        c = Consumer({"bootstrap.servers": target.cluster.bootstrap, "group.id": "streamers"})
        try:
            tps = [TopicPartition(target.topic, p) for p in range(target.partitions)]
            return sum(max(tp.offset, 0) for tp in c.committed(tps, timeout=10))
        finally:
            c.close()
    from gputel.transport.wal import group_progress

    return sum(group_progress(pipe.broker.address, "streamers", TOPIC).values())


def _accounting(
    pipe: Pipeline, streamer: Proc, collector: Proc, spec: str, drained: bool
) -> dict[str, Any]:
    committed = _progress(pipe)
    flushed = int(counter(scrape(metrics_url(collector)), FLUSHED))
    with open_store(spec) as store:
        stored = sum(store.count_points().values())
    return {
        "drained": drained, "streamer_committed_progress": committed,
        "collector_flushed": flushed, "store_count": stored,
        "exact": drained and stored == committed == flushed,
    }  # fmt: skip


def run(
    duration_s: float = 30.0,
    rate: int = 50_000,
    hosts: int = 64,
    warmup_s: float = 5.0,
    probe_gpus: int = 8,
    transports: tuple[str, ...] = TRANSPORTS,
) -> dict[str, Any]:
    """Both transports under the same load, and the figures side by side."""
    result: dict[str, Any] = {
        "duration_s": duration_s, "offered_points_per_s": rate,
        "csv": f"{hosts} hosts x 8 GPUs x 10 metrics x 10 scrapes, looped",
        "pipeline": "1 streamer (--forever --rate), 1 collector (defaults), SQLite, 1 gateway",
        "walbroker": f"fsync always, {PARTITIONS} partitions",
        "kafka1": f"Kafka 4.4 KRaft, 1 node, {PARTITIONS} partitions, JVM -Xmx512m; streamer "
        "transactions (acks=all, idempotent), collector read_committed",
    }  # fmt: skip
    for kind in transports:
        print(f"transport_bench: {kind} ...", file=sys.stderr, flush=True)
        result[kind] = run_transport(kind, duration_s, rate, hosts, warmup_s, probe_gpus)
    result["side_by_side"] = {
        kind: {
            "stored_points_per_s": result[kind]["stored_points_per_s"],
            "latency_p99_s": result[kind]["latency"]["p99_s"],
            "core_s_per_million_points": result[kind]["core_s_per_million_points"],
            "exact": result[kind]["accounting"]["exact"],
        }
        for kind in transports
    }
    return result


if __name__ == "__main__":
    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    offered = int(sys.argv[2]) if len(sys.argv) > 2 else 50_000
    print(json.dumps(run(duration_s=secs, rate=offered), indent=2))

"""The two transports side by side, raw: the same opaque 1,000-point batches through walbroker
and through a real 1-node Kafka 4.4 (KRaft, scripts/kafka.sh), on the same machine in one run.

No gputel codec, store or pipeline: only what the transport itself costs. For each transport:
publish (4 producer processes, 500 batches each, acknowledged: walbroker fsyncs every group
commit; Kafka acks=all with the idempotent producer, as gputel configures it) and consume (one
group member from the start of the topic), with points/s and the CPU seconds per million points
of the server process (the walbroker process, the Kafka JVM, read from /proc) and of the clients
(the producer processes' rusage; the consumer's own process time). Kafka counts records; each
record here is one batch of 1,000 points, so points = records x 1,000.

The end-to-end pipeline on each transport (streamer -> transport -> collector -> store) is
measured by the transport bench of the pipeline itself; this one says what the engines cost.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.broker_bench import BATCH_POINTS, BYTES_PER_POINT, consume, publish
from tests.fixtures.broker import BrokerProcess
from tests.kafka_cluster import KafkaCluster

PRODUCERS, BATCHES, PARTITIONS = 4, 500, 16
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _per_million(seconds: float, points: int) -> float:
    return round(seconds / points * 1e6, 3) if points else 0.0


def _measured(server_pid: int, step: Any) -> tuple[dict[str, Any], float, float]:
    server0, children0, own0 = cpu_seconds(server_pid), _children_cpu(), time.process_time()
    result = step()
    server = cpu_seconds(server_pid) - server0
    clients = _children_cpu() - children0 + time.process_time() - own0
    return result, server, clients


def _with_cpu(result: dict[str, Any], server: float, clients: float) -> dict[str, Any]:
    return {
        **result,
        "server_cpu_s_per_million_points": _per_million(server, result["points"]),
        "client_cpu_s_per_million_points": _per_million(clients, result["points"]),
    }


def walbroker(work: Path) -> dict[str, Any]:
    """Publish and consume through a real `walbroker serve` (fsync on every commit)."""
    b = BrokerProcess(work / "walbroker", "--topic", f"raw:{PARTITIONS}").start()
    try:
        assert b.proc is not None
        pid = b.proc.pid
        pub = _with_cpu(*_measured(pid, lambda: publish(b.address, "raw", PRODUCERS, BATCHES)))
        con = _with_cpu(*_measured(pid, lambda: consume(b.address, "raw", pub["points"])))
    finally:
        b.stop()
    return {"publish": pub, "consume": con}


def _kafka_produce(bootstrap: str, topic: str, batches: int, seed: int, out: Any) -> None:
    from confluent_kafka import Producer

    payload = os.urandom(BATCH_POINTS * BYTES_PER_POINT)
    acked = [0]

    def on_delivery(err: Any, msg: Any) -> None:
        if err is None:
            acked[0] += 1

    try:
        p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                      "linger.ms": 5, "queue.buffering.max.kbytes": 65536})  # fmt: skip
        t0 = time.perf_counter()
        for i in range(batches):
            while True:
                try:
                    p.produce(
                        topic, payload, partition=(seed + i) % PARTITIONS, on_delivery=on_delivery
                    )
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    p.poll(0.05)
            p.poll(0)
        if p.flush(120) != 0:
            raise RuntimeError("records still unacknowledged after 120 s")
        out.put((time.perf_counter() - t0, acked[0] * BATCH_POINTS))
    except Exception as exc:  # tell the parent at once instead of leaving it waiting
        out.put(exc)
        raise


def kafka_publish(bootstrap: str, topic: str) -> dict[str, Any]:
    """Points/s acknowledged by Kafka from PRODUCERS processes (as broker_bench.publish)."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_kafka_produce, args=(bootstrap, topic, BATCHES, i, out))
             for i in range(PRODUCERS)]  # fmt: skip
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {PRODUCERS} producers failed: {failed[0]!r}")
    points, slowest = sum(r[1] for r in results), max(r[0] for r in results)
    return {"producers": PRODUCERS, "batch_points": BATCH_POINTS, "points": points,
            "seconds": round(slowest, 3), "points_per_s": round(points / slowest)}  # fmt: skip


def kafka_consume(bootstrap: str, topic: str, expected: int) -> dict[str, Any]:
    """Points/s one group member reads (and commits) from the start of the topic."""
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    c.subscribe([topic])
    got, start, t0 = 0, time.perf_counter(), 0.0
    try:
        while got < expected and time.perf_counter() - start < 120:
            msgs = c.consume(500, timeout=1.0)
            if msgs and not t0:
                # From the first record, as walbroker's figure starts after its assignment:
                # the group join (a rebalance) is not the transport's throughput.
                t0 = time.perf_counter()
            got += BATCH_POINTS * sum(1 for m in msgs if m.error() is None)
            if msgs:
                c.commit(asynchronous=True)
        seconds = time.perf_counter() - (t0 or start)
    finally:
        c.close()
    return {"points": got, "seconds": round(seconds, 3), "points_per_s": round(got / seconds)}


def kafka(work: Path) -> dict[str, Any]:
    """Publish and consume through a real 1-node Kafka (KRaft) cluster."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    cluster = KafkaCluster(work / "kafka", 1)
    try:
        bootstrap = cluster.start()
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for f in admin.create_topics([NewTopic("raw", PARTITIONS, 1)]).values():
            f.result(timeout=60)
        del admin  # before the cluster stops, or its reconnect attempts fill stderr
        pid = int((work / "kafka" / "node1" / "pid").read_text())
        pub = _with_cpu(*_measured(pid, lambda: kafka_publish(bootstrap, "raw")))
        con = _with_cpu(*_measured(pid, lambda: kafka_consume(bootstrap, "raw", pub["points"])))
    finally:
        cluster.stop()
    return {"publish": pub, "consume": con}


def run() -> dict[str, Any]:
    """Both transports in one run, walbroker first."""
    with tempfile.TemporaryDirectory(prefix="transport-raw-") as d:
        work = Path(d)
        out = {"walbroker": walbroker(work), "kafka_1_node": kafka(work)}
    out["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    return out


if __name__ == "__main__":  # pragma: no cover - `python -m bench.transport_raw_bench`
    import json

    print(json.dumps(run(), indent=2))

"""walbroker benchmarks: publish and consume throughput, and restart time on a large log.

Each figure runs a real `walbroker serve` process (fsync on every commit) on
loopback; producers run in separate processes so the client's GIL does not
cap the broker. Payloads are opaque bytes of the size a 1,000-point telemetry
batch has on the wire (~38 bytes per point).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.fixtures.broker import BrokerProcess, free_port, wait_serving
from walbroker.config import LogConfig
from walbroker.consumer import Consumer
from walbroker.credentials import ClientSecurity
from walbroker.log import Log
from walbroker.producer import Producer
from walbroker.types import TopicPartition

BYTES_PER_POINT = 38
BATCH_POINTS = 1_000


def _produce(
    address: str,
    topic: str,
    batches: int,
    seed: int,
    out: Any,
    security: ClientSecurity | None = None,
) -> None:
    payload = os.urandom(BATCH_POINTS * BYTES_PER_POINT)
    try:
        with Producer(
            address,
            topic,
            lambda items: b"",
            max_pending_points=64 * BATCH_POINTS,
            security=security,
        ) as p:
            t0 = time.perf_counter()
            for i in range(batches):
                p.send_batch((seed + i) % p.partitions, payload, BATCH_POINTS)
            p.flush(120)
            out.put((time.perf_counter() - t0, p.stats.acked_points))
    except Exception as exc:  # tell the parent at once instead of leaving it waiting
        out.put(exc)
        raise


def publish(
    address: str,
    topic: str,
    producers: int = 4,
    batches: int = 500,
    security: ClientSecurity | None = None,
) -> dict[str, Any]:
    """Points/s acknowledged with `producers` processes publishing 1,000-point batches."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_produce, args=(address, topic, batches, i, out, security))
        for i in range(producers)
    ]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = _collect(out, procs, timeout_s=300)
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {producers} producers failed: {failed[0]!r}")
    points = sum(r[1] for r in results)
    slowest = max(r[0] for r in results)
    return {
        "producers": producers,
        "batch_points": BATCH_POINTS,
        "points": points,
        "seconds": round(slowest, 3),
        "points_per_s": round(points / slowest),
        "wall_seconds_incl_startup": round(wall, 3),
    }


def _collect(out: Any, procs: list[Any], timeout_s: float) -> list[Any]:
    """One result per process; a process that died without one (it could not even import,
    say) fails the figure at once instead of leaving the parent waiting for it."""
    results: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(results) < len(procs):
        try:
            results.append(out.get(timeout=1.0))
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead and out.empty():
                raise RuntimeError(f"producer processes died without a result: {dead}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(procs) - len(results)} producers gave no result"
                ) from None
    return results


# The last commit before request validation (issue #13): its broker is the "before".
BEFORE_VALIDATION = "3046716"


def _checkout(ref: str, into: Path) -> bool:
    """The broker's code (walbroker/, proto/) at `ref` in `into`; False without git history."""
    into.mkdir(parents=True)
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", ref, "walbroker", "proto"],
        capture_output=True,
    )
    if archive.returncode != 0:
        return False
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return True


class _OldBroker(BrokerProcess):
    """`walbroker serve` run from another checkout (its code first on sys.path).

    `python -m` puts the working directory (this checkout) at the head of sys.path,
    ahead of PYTHONPATH: without `-P` the "before" broker silently ran today's code —
    which no longer auto-creates topics, so its producers failed and the run hung.
    """

    def __init__(self, code: Path, data_dir: Path, *args: str) -> None:
        super().__init__(data_dir, *args)
        self.code = code

    def spawn(self, env: dict[str, str] | None = None, inherit: bool = True) -> None:
        self.argv = [self.argv[0], "-P", *self.argv[1:]]
        super().spawn({"PYTHONPATH": str(self.code)}, inherit)


def validation_cost(work: Path, rounds: int = 3, batches: int = 600) -> dict[str, Any]:
    """Publish throughput of the broker before request validation and now, alternately.

    Same machine, same run, same producers; the best of `rounds` runs each (the
    machine is shared, so single runs vary more than the difference looked for).
    The "before" broker auto-creates its topic (that code predates `--topic`); had
    today's code run instead, its producers would fail with NOT_FOUND.
    """
    old_code = work / "before"
    if not _checkout(BEFORE_VALIDATION, old_code):
        return {"skipped": f"no git history for {BEFORE_VALIDATION}"}
    runs: dict[str, list[int]] = {"before": [], "after": []}
    load_before = os.getloadavg()
    for r in range(rounds):
        for name in ("before", "after") if r % 2 == 0 else ("after", "before"):
            data = work / f"{name}{r}"
            if name == "before":
                b: BrokerProcess = _OldBroker(old_code, data, "--partitions", "16")
            else:
                b = BrokerProcess(data, "--topic", "vbench:16")
            b.start()
            try:
                runs[name].append(publish(b.address, "vbench", batches=batches)["points_per_s"])
            finally:
                b.stop()
    best = {name: max(v) for name, v in runs.items()}
    return {
        "before_ref": BEFORE_VALIDATION,
        "points_per_run": 4 * batches * BATCH_POINTS,
        "before_points_per_s": best["before"],
        "after_points_per_s": best["after"],
        "runs_points_per_s": runs,
        "after_vs_before": round(best["after"] / best["before"], 3),
        "loadavg_1m_before_and_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }


def consume(
    address: str, topic: str, expected: int, security: ClientSecurity | None = None
) -> dict[str, Any]:
    """Points/s one group member receives (and commits) from the start of the topic."""
    c = Consumer(
        address, "bench-consume", topic, max_unacked_points=400_000, security=security
    ).start()
    try:
        c.wait_for_assignment()
        got = 0
        t0 = time.perf_counter()
        while got < expected:
            msgs = c.poll(2.0, max_messages=5_000)
            if not msgs and time.perf_counter() - t0 > 120:
                break
            got += sum(m.count for m in msgs)
            c.commit()
        seconds = time.perf_counter() - t0
    finally:
        c.close()
    return {"points": got, "seconds": round(seconds, 3), "points_per_s": round(got / seconds)}


def fill(data_dir: Path, points: int, partitions: int = 16) -> float:
    """Write `points` points in 1,000-point records straight into a log; returns seconds."""
    wal = Log(
        LogConfig(
            data_dir, default_partitions=partitions, fsync="interval", retention_bytes=64 * 1024**3
        )
    )
    wal.start()
    payload = os.urandom(BATCH_POINTS * BYTES_PER_POINT)
    t0 = time.perf_counter()
    wal.create_topic("big", partitions)
    pending = []
    for i in range(points // BATCH_POINTS):
        pending.append(wal.append(TopicPartition("big", i % partitions), payload, BATCH_POINTS))
        if len(pending) >= 256:
            for f in pending:
                f.result()
            pending.clear()
    for f in pending:
        f.result()
    wal.close()
    return time.perf_counter() - t0


def restart(data_dir: Path) -> dict[str, Any]:
    """Seconds from `walbroker serve` exec to SERVING on an existing data dir."""
    port, mport = free_port(), free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "walbroker.cli",
            "serve",
            "--data-dir",
            str(data_dir),
            "--listen",
            f"127.0.0.1:{port}",
            "--metrics-listen",
            f"127.0.0.1:{mport}",
            "--retention-bytes",
            str(64 * 1024**3),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_serving(f"127.0.0.1:{port}", timeout_s=60)
        return {"seconds_to_serving": round(time.perf_counter() - t0, 3)}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def run(big_points: int = 10_000_000) -> dict[str, Any]:
    """All broker figures; `big_points` sizes the restart test's log."""
    work = Path(tempfile.mkdtemp(prefix="gputel-bench-"))
    try:
        broker = BrokerProcess(
            work / "broker", "--topic", "bench:16", "--retention-bytes", str(16 * 1024**3)
        ).start()
        try:
            pub = publish(broker.address, "bench")
            con = consume(broker.address, "bench", pub["points"])
        finally:
            broker.stop()
        fill_s = fill(work / "big", big_points)
        rst = restart(work / "big")
        rst.update(points=big_points, fill_seconds=round(fill_s, 1))
        cold = BrokerProcess(work / "big", "--retention-bytes", str(64 * 1024**3))
        cold.data_dir = work / "big"
        cold.start()
        try:  # a catching-up member after a restart: everything comes from LMDB, not memory
            con_cold = consume(cold.address, "big", min(big_points, 2_000_000))
        finally:
            cold.stop()
        validation = validation_cost(work / "validation")
        return {
            "publish": pub,
            "publish_before_and_after_validation": validation,
            "consume": con,
            "consume_from_disk": con_cold,
            "restart": rst,
            "targets": {
                "publish_points_per_s": 400_000,
                "consume_points_per_s": 500_000,
                "restart_seconds": 2.0,
                "after_vs_before_validation_min": 0.9,
            },
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    import json

    print(json.dumps(run(int(os.environ.get("BENCH_BIG_POINTS", 10_000_000))), indent=2))

"""Streamer throughput: rows/s from a parsed CSV into a real broker, one streamer process.

A real `walbroker serve` process (fsync on every commit, 16 partitions) runs on loopback;
the streamer runs in this process as one producer-group member owning every partition.
The first pass is a warm-up; the figure is the later passes' rows (one point each) over
the time from handing the first row of pass 2 to the producer until the last row is
acknowledged, so rows buffered in the producer are never counted before they are sent.
`run()` is called by `bench/run.py`.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from scripts import gen_dcgm
from streamer.config import StreamerConfig
from streamer.runner import Streamer
from streamer.source import new_metrics, read_csv
from tests.fixtures.broker import BrokerProcess


def run(
    hosts: int = 64, scrapes: int = 10, passes: int = 5, batch_size: int = 1000
) -> dict[str, Any]:
    """Return rows/s over passes 2..`passes` of a hosts x 8 GPUs x 10 metrics x scrapes CSV."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dcgm.csv"
        with open(path, "w", encoding="utf-8", newline="") as f:
            gen_dcgm.write(f, 11, hosts, 8, scrapes)
        rows = read_csv(path)  # only to count the accepted rows
        broker = BrokerProcess(
            Path(tmp) / "broker", "--topic", "telemetry:16", "--topic", "telemetry.dlq:4"
        ).start()
        try:
            config = StreamerConfig(
                broker=broker.address, csv=str(path), passes=passes, batch_size=batch_size,
                metrics_listen="",
            )  # fmt: skip
            streamer = Streamer(config, new_metrics(CollectorRegistry()))
            marks = _watch(streamer, len(rows), passes * len(rows))
            started = time.perf_counter()
            code = streamer.run()
            stopped = time.perf_counter()
        finally:
            broker.stop()
    first, last = marks if len(marks) == 2 else (stopped, stopped)
    return {
        "rows_per_pass": len(rows),
        "passes": passes,
        "batch_points": batch_size,
        "exit_code": code,
        "first_pass_s": round(first - started, 3),
        "rows_per_s": round((passes - 1) * len(rows) / (last - first)),
        "finish_and_shutdown_s": round(stopped - last, 3),
        "backpressure_retries": streamer.producer.stats.backpressure,
    }


def _watch(streamer: Streamer, rows: int, total: int) -> list[float]:
    """Record when pass 2 starts (`rows` handed to the producer) and when `total` are acked."""
    out: list[float] = []

    def sent() -> int:
        return sum(st.sent for st in list(streamer.own.states.values()))

    def watch() -> None:
        while sent() < rows:
            time.sleep(0.001)
        out.append(time.perf_counter())
        while streamer.producer.stats.acked_points < total:
            time.sleep(0.001)
        out.append(time.perf_counter())

    threading.Thread(target=watch, name="bench-watch", daemon=True).start()
    return out


def main() -> None:
    """Print the numbers as JSON."""
    print(json.dumps(run(), indent=2))


if __name__ == "__main__":
    main()

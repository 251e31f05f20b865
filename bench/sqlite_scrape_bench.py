"""The SQLite store's CPU for a live fleet's writes: 8,000 GPUs x 10 metrics every second.

What the collector's writer thread does when 1,000 dcgm-exporter targets (8 GPUs each) are
scraped every second (`scrape_bench`), without the broker, the collector's decoding or
the machine's other work: each second of data (one point per GPU and metric, one time) is
written through `SqliteStore.write` in 5,000-point batches (the collector's default
`--batch-size`), GPU-major as scrapes arrive, into a fresh file with the store's defaults
(WAL, synchronous=FULL). Times are `time.process_time` of this process (CPU: the store's
Python and SQLite's C; fsync waits are not CPU).

Figures: CPU-s per second of data over the first and the last 10 s (the file grows, so
the last is the steady cost), us per point over the last 10 s, and the file's size.
At 1.0 CPU-s per second of data the writer alone needs a whole core.

`python -m bench.sqlite_scrape_bench [seconds] [gpus]` prints JSON.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from proto.batch import Gpu, PointBatch
from store.sqlite import SqliteStore

METRICS = [f"DCGM_FI_DEV_FIELD_{i:02d}" for i in range(10)]
BATCH = 5_000
T0 = 1_752_871_350_000_000_000
S = 1_000_000_000


def _batches(gpus: list[Gpu], t: int, second: int) -> list[PointBatch]:
    """One second of data, GPU-major, cut into BATCH-point batches."""
    out: list[PointBatch] = []
    per_batch = BATCH // len(METRICS)
    for i in range(0, len(gpus), per_batch):
        chunk = gpus[i : i + per_batch]
        n = len(chunk) * len(METRICS)
        out.append(
            PointBatch(
                gpus=chunk,
                metrics=METRICS,
                gpu_index=[g for g in range(len(chunk)) for _ in METRICS],
                metric_index=list(range(len(METRICS))) * len(chunk),
                time_ns=[t] * n,
                value=[float((second * 7 + k) % 101) for k in range(n)],
                source_time_ns=[t] * n,
            )
        )
    return out


def run(seconds: int = 30, gpus: int = 8_000) -> dict[str, Any]:
    """Write `seconds` of a `gpus`-GPU fleet's data; CPU per second of data."""
    fleet = [
        Gpu(f"GPU-{i:08d}-0000-4000-8000-000000000000", f"node-{i // 8:04d}", i % 8,
            f"nvidia{i % 8}", "NVIDIA H100 80GB HBM3")
        for i in range(gpus)
    ]  # fmt: skip
    cpu: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scrape.db"
        store = SqliteStore(path)
        try:
            for second in range(seconds):
                batches = _batches(fleet, T0 + second * S, second)
                started = time.process_time()
                for b in batches:
                    store.write(b)
                cpu.append(time.process_time() - started)
        finally:
            store.close()
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
    window = min(10, seconds)
    last = sum(cpu[-window:]) / window
    return {
        "gpus": gpus,
        "metrics": len(METRICS),
        "seconds": seconds,
        "batch_points": BATCH,
        "cpu_s_per_data_s_first": round(sum(cpu[:window]) / window, 3),
        "cpu_s_per_data_s_last": round(last, 3),
        "us_per_point_last": round(last / (gpus * len(METRICS)) * 1e6, 2),
        "file_mib": round(size / 2**20, 1),
    }


def main() -> None:
    """Print the figures as JSON."""
    args = [int(a) for a in sys.argv[1:3]]
    print(json.dumps(run(*args), indent=2))


if __name__ == "__main__":
    main()

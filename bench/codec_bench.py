"""Benchmarks of the data path before the broker: CSV parse, batch build, encode, decode.

`run()` returns a flat dict of numbers for `bench/run.py`; run this module directly to
print them. Input is a generated DCGM CSV (scripts/gen_dcgm.py) in a temporary folder.
"""

from __future__ import annotations

import json
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from proto.batch import PointBatch
from proto.codec import BatchBuilder, decode, encode
from scripts import gen_dcgm
from streamer.source import SourceRows, read_csv

PARTITIONS = 16


def _best_rate(count: int, fn: Callable[[], object], repeat: int = 3) -> float:
    """Return `count` / the fastest of `repeat` timed calls of `fn`."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return count / best


def _batches(rows: SourceRows, batch_size: int) -> list[PointBatch]:
    """Return every row in batches of `batch_size`, one partition's GPUs per batch."""
    partition_of = rows.gpu_partitions(lambda k: zlib.crc32(k.encode()) % PARTITIONS)
    builders = [BatchBuilder() for _ in range(PARTITIONS)]
    gpus, metrics, out = rows.gpus, rows.metrics, []
    now = time.time_ns()
    for g, m, v, st in rows.rows():
        b = builders[partition_of[g]]
        b.add(gpus[g], metrics[m], now, v, st)
        if len(b) >= batch_size:
            out.append(b.build())
    out.extend(b.build() for b in builders if len(b))
    return out


def run(hosts: int = 64, passes: int = 20, batch_size: int = 1000) -> dict[str, float]:
    """Return rows/s of CSV parse and batch build, points/s of encode and decode, bytes/point."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dcgm.csv"
        with open(path, "w", encoding="utf-8", newline="") as f:
            gen_dcgm.write(f, 11, hosts, 8, passes)
        started = time.perf_counter()
        rows = read_csv(path)
        parse_rate = len(rows) / (time.perf_counter() - started)
    n = len(rows)
    batches = _batches(rows, batch_size)
    wire = [encode(b) for b in batches]
    return {
        "csv_rows": n,
        "csv_parse_rows_per_s": round(parse_rate),
        "batch_build_rows_per_s": round(_best_rate(n, lambda: _batches(rows, batch_size))),
        "encode_points_per_s": round(_best_rate(n, lambda: [encode(b) for b in batches])),
        "decode_points_per_s": round(_best_rate(n, lambda: [decode(w) for w in wire])),
        "batch_points": batch_size,
        "wire_bytes_per_point": round(sum(map(len, wire)) / n, 2),
    }


def main() -> None:
    """Print the numbers as JSON."""
    print(json.dumps(run(), indent=2))


if __name__ == "__main__":
    main()

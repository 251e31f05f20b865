"""The streamer's CPU per row on a real-format export, offline: read, validate, batch, encode.

No broker and no processes: the export `import_bench` uses (247,030 distinct rows of
24,703 GPUs, every field quoted, ~400-character `labels_raw`) is scanned by
`streamer.scan.CsvScanner` with the streamer's 16 partitions and no cache, each
partition's rows are cut into 2,000-point batches and encoded by
`streamer.encode.encode_rows`, as the streamer does in `--time source` mode. Times are
`time.process_time` (CPU, so the figure holds on a busy machine), best of `rounds`:

- `csv_reader_s`: `csv.reader` alone over the file (the floor of any path that uses it);
- `first_scan_s`: the first scan, every GPU new (labels parsed, GPUs interned);
- `known_scan_s`: a second scan by the same scanner (every GPU known: the row path alone);
- `encode_s`: batching and encoding the first scan's rows (GPU entries built on first use);
- `rows_per_cpu_s`: rows / (first scan + encode), the streamer's own work per row
  (the real process adds start-up, gRPC and its metrics endpoint).

`python -m bench.streamer_path_bench [hosts] [rounds]` prints JSON.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from array import array
from typing import Any

from bench.import_bench import export
from streamer.encode import encode_rows
from streamer.scan import CsvScanner
from streamer.source import PartRows, RowBlock, open_csv
from walbroker.types import partition_for_key

PARTITIONS, BATCH = 16, 2_000


def _csv_reader_s(path: str) -> float:
    started = time.process_time()
    with open_csv(path) as f:
        for _fields in csv.reader(f, strict=True):
            pass
    return time.process_time() - started


def _extend(into: PartRows, rows: PartRows, start: int, end: int) -> None:
    into.gpu.extend(rows.gpu[start:end])
    into.metric.extend(rows.metric[start:end])
    into.value.extend(rows.value[start:end])
    into.source_time_ns.extend(rows.source_time_ns[start:end])


def _encode_s(scanner: CsvScanner, blocks: list[RowBlock]) -> tuple[float, int]:
    """CPU seconds to batch and encode the blocks as the streamer does; payload bytes."""
    started = time.process_time()
    pending = [PartRows() for _ in range(PARTITIONS)]
    size = 0
    for last, block in enumerate(blocks, 1):
        for p, part in enumerate(block.parts):
            rows = pending[p]
            _extend(rows, part, 0, len(part))
            n, start = len(rows), 0
            while n - start >= BATCH or (last == len(blocks) and start < n):
                end = min(n, start + BATCH)
                sources: array[int] = rows.source_time_ns[start:end]
                payload = encode_rows(
                    scanner.table, scanner.metrics, rows.gpu[start:end],
                    rows.metric[start:end], sources, rows.value[start:end], sources,
                )  # fmt: skip
                size += len(payload)
                start = end
            if start:
                pending[p] = PartRows()
                _extend(pending[p], rows, start, n)
    return time.process_time() - started, size


def _one_round(path: str) -> dict[str, Any]:
    scanner = CsvScanner(path, PARTITIONS, lambda uuid: partition_for_key(uuid, PARTITIONS), 0)
    started = time.process_time()
    blocks = list(scanner.scan())
    first = time.process_time() - started
    encode, size = _encode_s(scanner, blocks)
    started = time.process_time()
    for _block in scanner.scan():
        pass
    known = time.process_time() - started
    rows = sum(len(p) for b in blocks for p in b.parts)
    return {"rows": rows, "first_scan_s": first, "known_scan_s": known, "encode_s": encode,
            "payload_mib": round(size / 2**20, 1)}  # fmt: skip


def run(hosts: int = 3088, rounds: int = 3) -> dict[str, Any]:
    """Best-of-`rounds` CPU seconds of each step (see the module docstring)."""
    path = str(export(hosts))
    results = [_one_round(path) for _ in range(rounds)]
    best = {k: min(r[k] for r in results) for k in ("first_scan_s", "known_scan_s", "encode_s")}
    rows = results[0]["rows"]
    return {
        "rows": rows,
        "gpus": rows // 10,
        "csv_reader_s": round(min(_csv_reader_s(path) for _ in range(rounds)), 3),
        **{k: round(v, 3) for k, v in best.items()},
        "payload_mib": results[0]["payload_mib"],
        "rows_per_cpu_s": round(rows / (best["first_scan_s"] + best["encode_s"])),
        "known_rows_per_cpu_s": round(rows / best["known_scan_s"]),
    }


def main() -> None:
    """Print the numbers as JSON."""
    hosts = int(sys.argv[1]) if len(sys.argv) > 1 else 3088
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    print(json.dumps(run(hosts, rounds), indent=2))


if __name__ == "__main__":
    main()

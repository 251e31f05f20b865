"""The collector's CPU per point on an import's payloads, offline: decode, merge, prepare, write.

No broker and no processes: the payloads a metric-major real export produces (24,703 GPUs
x 10 metrics, the streamer's 16 partitions, ~2,000 points a record, each GPU entry with the
8 labels of a real `labels_raw`, every GPU's first batch new to the store) are encoded
once, then decoded without labels, merged into 5,000-point flushes and written to a fresh
SQLite file as the collector does, timing each step with `time.process_time` (CPU, so the
figure holds on a busy machine). Two passes: the second starts with the decoder's GPU cache
warm, as a long-running collector is.

`python -m bench.collector_path_bench` prints JSON (per step CPU-s and us per point).
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from collector.pending import merge
from proto import codec
from proto.batch import Gpu, PointBatch
from store.sqlite import SqliteStore

GPUS, METRICS, PARTITIONS, RECORD, FLUSH = 24_703, 10, 16, 2_000, 5_000
T0 = 1_752_871_350_000_000_000


def payloads(seed: int = 1) -> list[bytes]:
    """The records of a metric-major export: one per partition every RECORD points."""
    rnd = random.Random(seed)
    gpus = [_gpu(f"GPU-{rnd.getrandbits(128):032x}", i) for i in range(GPUS)]
    out: list[bytes] = []
    held: list[list[tuple[Gpu, str]]] = [[] for _ in range(PARTITIONS)]

    def emit(rows: list[tuple[Gpu, str]]) -> None:
        builder = codec.BatchBuilder()
        for g, m in rows:
            builder.add(g, m, T0, rnd.random() * 100, T0)
        out.append(codec.encode(builder.build()))

    for m in (f"DCGM_FI_DEV_FIELD_{i}" for i in range(METRICS)):
        for n, g in enumerate(gpus):
            part = held[n % PARTITIONS]
            part.append((g, m))
            if len(part) >= RECORD:
                emit(part)
                part.clear()
    for part in held:
        if part:
            emit(part)
    return out


def _gpu(uuid: str, i: int) -> Gpu:
    """GPU `i` with the labels the streamer sends (`labels_raw` of a real export minus
    `__name__`): the collector parses past them, so they belong in its payloads."""
    host, index, model = f"host-{i // 8:05d}", i % 8, "NVIDIA H100 80GB HBM3"
    labels = {
        "DCGM_FI_DRIVER_VERSION": "535.129.03", "Hostname": host, "UUID": uuid,
        "device": f"nvidia{index}", "gpu": str(index), "instance": f"{host}:9400",
        "job": "dgx_dcgm_exporter", "modelName": model,
    }  # fmt: skip
    return Gpu(uuid, host, index, f"nvidia{index}", model, labels=labels)


def one_pass(records: list[bytes], db: Path) -> dict[str, float]:
    """Decode, merge, prepare and write every record; CPU seconds per step."""
    store = SqliteStore(db)
    cpu = dict.fromkeys(("decode", "merge", "prepare", "write"), 0.0)
    clock = time.process_time
    held: list[PointBatch] = []

    def flush() -> None:
        t = clock()
        batch = merge(held)
        t1 = clock()
        prepared = store.prepare(batch)
        t2 = clock()
        store.write_prepared(prepared)
        cpu["merge"] += t1 - t
        cpu["prepare"] += t2 - t1
        cpu["write"] += clock() - t2
        held.clear()

    for record in records:
        t = clock()
        held.append(codec.decode(record, labels=False))
        cpu["decode"] += clock() - t
        if sum(map(len, held)) >= FLUSH:
            flush()
    if held:
        flush()
    stored = sum(store.count_points().values())
    store.close()
    if stored != GPUS * METRICS:
        raise AssertionError(f"stored {stored} of {GPUS * METRICS} points")
    return cpu


def run() -> dict[str, Any]:
    """Both passes' figures."""
    records = payloads()
    passes = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(2):
            cpu = one_pass(records, Path(tmp) / f"pass{n}.db")
            total = sum(cpu.values())
            passes.append(
                {
                    "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
                    "cpu_s_total": round(total, 3),
                    "us_per_point": round(total / (GPUS * METRICS) * 1e6, 2),
                }
            )
    return {"points": GPUS * METRICS, "records": len(records), "passes": passes}


def main() -> None:
    """Print the figures as JSON."""
    print(json.dumps(run(), indent=2))


if __name__ == "__main__":
    main()

"""The synthetic fleet of the fleet benchmarks: random-format uuids, 8 GPUs a host, 3 models."""

from __future__ import annotations

import random
import uuid as uuidlib

from bench.store_bench import METRICS
from proto.batch import Gpu, PointBatch

T0 = 1_700_000_000_000_000_000
S = 10**9
MODELS = ("NVIDIA H100 80GB HBM3",) * 7 + ("NVIDIA A100-SXM4-80GB",) * 2 + ("NVIDIA L40S",)


def fleet(n: int, seed: int = 18) -> list[Gpu]:
    """`n` GPUs with random-format uuids (as DCGM reports them), 8 per host."""
    rng = random.Random(seed)
    return [
        Gpu(uuid=f"GPU-{uuidlib.UUID(int=rng.getrandbits(128))}", hostname=f"node-{i // 8:05d}",
            gpu=i % 8, device=f"nvidia{i % 8}", model=MODELS[i % len(MODELS)])
        for i in range(n)
    ]  # fmt: skip


def scrape(gpus: list[Gpu], t: int) -> PointBatch:
    """One scrape of `gpus` at time `t`: every GPU x every metric."""
    b = PointBatch(gpus=gpus, metrics=list(METRICS))
    for g in range(len(gpus)):
        for m in range(len(METRICS)):
            b.gpu_index.append(g)
            b.metric_index.append(m)
            b.time_ns.append(t)
            b.value.append(float((g * 7 + m) % 100))
            b.source_time_ns.append(t - S)
    return b

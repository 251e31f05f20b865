"""Small batch builders for store tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from proto.batch import Gpu, PointBatch

S = 1_000_000_000
T0 = 1_700_000_000 * S


def gpu(n: int, host: str = "", index: int = 0, **k8s: str) -> Gpu:
    """Return a GPU entry with a deterministic uuid."""
    return Gpu(
        uuid=f"GPU-{n:04d}",
        hostname=host or f"host-{n // 8:02d}",
        gpu=index if index or host else n % 8,
        device=f"nvidia{n % 8}",
        model="NVIDIA H100 80GB HBM3",
        **k8s,
    )


def batch(points: Iterable[tuple[Gpu, str, int, float]]) -> PointBatch:
    """Return a columnar batch of (gpu, metric, time_ns, value); source_time is time - 1 s."""
    out = PointBatch()
    gpus: dict[str, int] = {}
    metrics: dict[str, int] = {}
    for g, metric, t, v in points:
        if g.uuid not in gpus:
            gpus[g.uuid] = len(out.gpus)
            out.gpus.append(g)
        if metric not in metrics:
            metrics[metric] = len(out.metrics)
            out.metrics.append(metric)
        out.gpu_index.append(gpus[g.uuid])
        out.metric_index.append(metrics[metric])
        out.time_ns.append(t)
        out.value.append(v)
        out.source_time_ns.append(t - S)
    return out


def grid(gpus: list[Gpu], metrics: list[str], times: list[int]) -> PointBatch:
    """Return one point per (gpu, metric, time) with value = seconds offset from T0."""
    return batch(
        (g, m, t, float((t - T0) // S) + i / 10)
        for g in gpus
        for i, m in enumerate(metrics)
        for t in times
    )


def on_threads(work: Callable[[int], object], n: int) -> None:
    """Run `work(i)` for i in range(n), each on its own thread; re-raise the first error."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:  # handed to the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), name=f"test-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]

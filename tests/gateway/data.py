"""The gateway tests' data set: 4 hosts, index 0 and 1 on three of them, index 5 on one."""

from __future__ import annotations

from proto.batch import Gpu, PointBatch

S = 1_000_000_000
T0 = 1_700_000_000 * S  # 2023-11-14T22:13:20Z
UTIL = "DCGM_FI_DEV_GPU_UTIL"
TEMP = "DCGM_FI_DEV_GPU_TEMP"
METRICS = (TEMP, UTIL)
TIMES = tuple(T0 + k * S for k in range(10))
MODEL = "NVIDIA H100 80GB HBM3"


def gpu(host: int, index: int) -> Gpu:
    """Return the GPU at `index` on host `host`."""
    return Gpu(
        uuid=f"GPU-h{host}-{index}",
        hostname=f"host-{host}",
        gpu=index,
        device=f"nvidia{index}",
        model=MODEL if host < 3 else "NVIDIA A100-SXM4-80GB",
    )


GPUS = (*(gpu(h, i) for h in range(3) for i in (0, 1)), gpu(3, 5))
UNIQUE = gpu(3, 5)  # the only GPU with index 5


def value(metric: str, time_ns: int) -> float:
    """Return the value stored for (metric, time): seconds since T0, + 0.5 for UTIL."""
    return (time_ns - T0) / S + (0.5 if metric == UTIL else 0.0)


def points(gpus: tuple[Gpu, ...], times: tuple[int, ...], metrics=METRICS) -> PointBatch:
    """Return one point per (gpu, metric, time)."""
    batch = PointBatch(gpus=list(gpus), metrics=list(metrics))
    for gi in range(len(gpus)):
        for mi, metric in enumerate(metrics):
            for t in times:
                batch.gpu_index.append(gi)
                batch.metric_index.append(mi)
                batch.time_ns.append(t)
                batch.value.append(value(metric, t))
                batch.source_time_ns.append(t - S)
    return batch


def seed() -> PointBatch:
    """Return the whole data set."""
    return points(GPUS, TIMES)

"""The telemetry batch as Python values: columnar and dictionary-encoded.

A batch lists each GPU and each metric name once; points are four parallel
columns that index into those lists. Labels that repeat per GPU (hostname,
model, the parsed `labels_raw`, k8s placement) live in the `Gpu` entry, never in
a point. `proto.codec` turns a `PointBatch` into bytes and back; the broker
never looks inside.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class Gpu:
    """One GPU as the source describes it. `uuid` is the identity; `gpu` is the host-local index."""

    uuid: str
    hostname: str
    gpu: int
    device: str = ""
    model: str = ""
    container: str = ""
    pod: str = ""
    namespace: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    # The fields above but labels, as one tuple (`store.schema.GpuFields`): a store's cache
    # key and table row. Built once here: a collector needs it for every GPU of every batch,
    # and the decoder hands out the same `Gpu` for the same entry (`proto.codec`).
    descriptor: tuple[str, str, int, str, str, str, str, str] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        descriptor = (
            self.uuid, self.hostname, self.gpu, self.device, self.model,
            self.container, self.pod, self.namespace,
        )  # fmt: skip
        object.__setattr__(self, "descriptor", descriptor)


class Point(NamedTuple):
    """One point, expanded from a batch (convenient, not fast)."""

    gpu: Gpu
    metric: str
    time_ns: int
    value: float
    source_time_ns: int


@dataclass(slots=True)
class PointBatch:
    """Points in columns: `gpu_index[i]` and `metric_index[i]` index `gpus` and `metrics`."""

    gpus: list[Gpu] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    gpu_index: list[int] = field(default_factory=list)
    metric_index: list[int] = field(default_factory=list)
    time_ns: list[int] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    source_time_ns: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.time_ns)

    def points(self) -> Iterator[Point]:
        """Yield every point with its GPU and metric resolved."""
        gpus, metrics = self.gpus, self.metrics
        for gi, mi, t, v, st in zip(
            self.gpu_index,
            self.metric_index,
            self.time_ns,
            self.value,
            self.source_time_ns,
            strict=True,
        ):
            yield Point(gpus[gi], metrics[mi], t, v, st)

"""Encoding a run of one partition's rows as one telemetry batch, from cached GPU entries.

A batch lists each of its GPUs once (`gpus`, with the GPU's labels) and indexes them
from the point columns. Building those entries is the expensive part (a label map per
GPU), and a real export puts ~one point of each GPU in a batch, so each GPU's entry is
encoded once per process (`GpuTable.wire`) and the batch is assembled from bytes:
protobuf parses concatenated messages as one merged message whose repeated fields
are appended in order, so the cached single-GPU messages followed by the message of
the remaining fields decode as the whole batch (`proto.codec.decode` checks it).
"""

from __future__ import annotations

from collections.abc import Sequence

from proto.gen import telemetry_pb2 as pb
from streamer.gpus import GpuTable


def encode_rows(
    table: GpuTable,
    metric_names: Sequence[str],
    gpu: Sequence[int],
    metric: Sequence[int],
    time_ns: Sequence[int],
    value: Sequence[float],
    source_time_ns: Sequence[int],
) -> bytes:
    """Return the wire form of the points given by GPU and metric ordinals and columns.

    Values are finite and ordinals valid: the parser accepted only such rows.
    """
    gpu_slot: dict[int, int] = {}
    local_gpu = [gpu_slot.setdefault(g, len(gpu_slot)) for g in gpu]
    metric_slot: dict[int, int] = {}
    local_metric = [metric_slot.setdefault(m, len(metric_slot)) for m in metric]
    msg = pb.PointBatch(metrics=[metric_names[m] for m in metric_slot])
    msg.gpu_index.extend(local_gpu)
    msg.metric_index.extend(local_metric)
    msg.time_ns.extend(time_ns)
    msg.value.extend(value)
    msg.source_time_ns.extend(source_time_ns)
    wire = table.wire
    return b"".join([*(wire(g) for g in gpu_slot), msg.SerializeToString()])

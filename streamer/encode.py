"""Encoding a run of one partition's rows as one telemetry batch, from cached GPU entries.

A batch lists each of its GPUs once (`gpus`, with the GPU's labels) and indexes them
from the point columns. Building those entries is the expensive part (a label map per
GPU), and a real export puts ~one point of each GPU in a batch, so each GPU's entry is
encoded once per process (`GpuTable.wires`) and the batch is assembled from bytes:
protobuf parses concatenated messages as one merged message whose repeated fields
are appended in order, so the cached single-GPU messages followed by the message of
the remaining fields decode as the whole batch (`proto.codec.decode` checks it).

The fixed-width columns (`time_ns`, `value`, `source_time_ns`: packed `sfixed64` and
`double`, little-endian on the wire) are written straight from arrays' memory, not
converted number by number; the index columns (varints) go through protobuf.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence

from proto.gen import telemetry_pb2 as pb
from streamer.gpus import GpuTable

# Field numbers of the packed columns in `PointBatch` (proto/telemetry.proto).
_TIME_NS, _VALUE, _SOURCE_TIME_NS = 5, 6, 7
_LITTLE_ENDIAN = sys.byteorder == "little"


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
    gpus = list(dict.fromkeys(gpu))  # each GPU once, in order of first use
    gpu_slot = dict(zip(gpus, range(len(gpus)), strict=True))
    metrics = list(dict.fromkeys(metric))
    metric_slot = dict(zip(metrics, range(len(metrics)), strict=True))
    msg = pb.PointBatch(metrics=list(map(metric_names.__getitem__, metrics)))
    msg.gpu_index.extend(map(gpu_slot.__getitem__, gpu))
    msg.metric_index.extend(map(metric_slot.__getitem__, metric))
    return b"".join(
        [
            *table.wires(gpus),
            msg.SerializeToString(),
            _packed(_TIME_NS, array("q", time_ns)),
            _packed(_VALUE, array("d", value)),
            _packed(_SOURCE_TIME_NS, array("q", source_time_ns)),
        ]
    )


def _packed(field: int, column: array[int] | array[float]) -> bytes:
    """A packed repeated fixed-width field (length-delimited) holding `column`."""
    if not column:
        return b""
    if not _LITTLE_ENDIAN:
        column = array(column.typecode, column)
        column.byteswap()
    data = column.tobytes()
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _varint(n: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative int."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)

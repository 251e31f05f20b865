"""The telemetry batch codec: `PointBatch` to the wire (`gputel.telemetry.v1`) and back.

The streamer encodes, the collector decodes; the broker carries the bytes unread.
`encode` and `decode` validate the same invariants (equal column lengths, indexes in
range, finite values) and raise `CodecError` when one is broken, so a bad batch never
leaves a producer and never reaches a store. Both are pure functions and thread-safe;
a `BatchBuilder` is not (one per partition and thread). `encode_untimed` + `with_times`
split `encode` in two, so points sent again with new processing times are encoded once.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence, Sized
from dataclasses import dataclass, replace
from typing import Any, cast

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from proto.batch import Gpu, PointBatch
from proto.gen import telemetry_pb2 as pb

_UINT32_MAX = 2**32 - 1


class CodecError(ValueError):
    """The bytes are not a valid telemetry batch, or the batch breaks an invariant."""


def encode(batch: PointBatch) -> bytes:
    """Return the wire form of `batch`; raise `CodecError` if it breaks an invariant."""
    check(batch)
    msg = _untimed_message(batch)
    _extend(msg.time_ns, batch.time_ns)
    return msg.SerializeToString()


@dataclass(frozen=True, slots=True)
class UntimedBatch:
    """The wire form of a batch without its `time_ns` column, and its point count.

    `with_times` completes it. A producer that sends the same points again and again
    with new processing times (the streamer's later passes) encodes them only once.
    """

    wire: bytes
    count: int


def encode_untimed(batch: PointBatch) -> UntimedBatch:
    """Return `batch` minus its time column (ignored); raise `CodecError` on a broken invariant."""
    n = len(batch.value)
    check(replace(batch, time_ns=[0] * n))
    return UntimedBatch(_untimed_message(batch).SerializeToString(), n)


def with_times(untimed: UntimedBatch, time_ns: Sequence[int]) -> bytes:
    """Return the wire form of the batch `untimed` with the time column `time_ns`.

    Protobuf parses concatenated messages as one merged message and appends the
    elements of a repeated field that occurs twice, so the untimed bytes followed by a
    message holding only `time_ns` decode as the whole batch.
    """
    if len(time_ns) != untimed.count:
        raise CodecError(f"{len(time_ns)} timestamps for a batch of {untimed.count} points")
    times = pb.PointBatch()
    _extend(times.time_ns, time_ns)
    return untimed.wire + times.SerializeToString()


def _untimed_message(batch: PointBatch) -> pb.PointBatch:
    """Return the message of every field of `batch` but `time_ns` (invariants checked)."""
    msg = pb.PointBatch(metrics=batch.metrics)
    add_gpu = msg.gpus.add
    for g in batch.gpus:
        if not 0 <= g.gpu <= _UINT32_MAX:
            raise CodecError(f"gpu {g.uuid!r}: host-local index {g.gpu} out of uint32 range")
        add_gpu(
            uuid=g.uuid, hostname=g.hostname, gpu=g.gpu, device=g.device, model=g.model,
            container=g.container, pod=g.pod, namespace=g.namespace, labels=g.labels,
        )  # fmt: skip
    _extend(msg.gpu_index, batch.gpu_index)
    _extend(msg.metric_index, batch.metric_index)
    _extend(msg.value, batch.value)
    _extend(msg.source_time_ns, batch.source_time_ns)
    return msg


def _extend(column: Any, values: Iterable[Any]) -> None:
    """Append `values` to a repeated field; `CodecError` when one does not fit its wire type."""
    try:
        column.extend(values)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"column value out of range for its wire type: {exc}") from exc


def decode(data: bytes, labels: bool = True) -> PointBatch:
    """Return the batch in `data`; raise `CodecError` on garbage or a broken invariant.

    `labels=False` leaves each GPU's `labels` empty: the stores keep none of them. It parses
    `data` with each GPU entry left as its wire bytes (`_batch_of_entries`) and shares one
    `Gpu` per distinct entry between batches, parsing (as a `GpuView`) only entries it has
    not seen: with ~10 labels a GPU that cuts the collector's decoding by more than half.
    """
    msg: Any
    try:
        if labels:
            msg = pb.PointBatch.FromString(data)
            gpus = [_gpu_from_wire(g) for g in msg.gpus]
        else:
            msg = _batch_of_entries().FromString(data)
            gpus = _interned(msg.gpus)
    except DecodeError as exc:
        raise CodecError(f"not a telemetry batch ({len(data)} bytes): {exc}") from exc
    batch = PointBatch(
        gpus=gpus,
        metrics=list(msg.metrics),
        gpu_index=list(msg.gpu_index),
        metric_index=list(msg.metric_index),
        time_ns=list(msg.time_ns),
        value=list(msg.value),
        source_time_ns=list(msg.source_time_ns),
    )
    if data and not (batch.time_ns or batch.gpus or batch.metrics):
        # Valid protobuf but no known field: not something an encoder of this format wrote.
        raise CodecError(f"not a telemetry batch ({len(data)} bytes): no known field")
    check(batch)
    return batch


# GPUs decoded without labels, by the bytes of their wire entry: a fleet sends the same GPUs
# batch after batch, and reading eight fields out of an entry and building the frozen `Gpu`
# cost more than the rest of decoding it. The entry's bytes as they arrived (its unparsed
# labels included) are the key: equal bytes parse to equal fields, so sharing the value is
# invisible to callers (unequal bytes for the same GPU only cost a second entry). Bounded in
# entries (cleared when full) and in key size: a producer's outsized labels are decoded
# every time instead of held (real entries are ~250-600 bytes). Dict operations are atomic
# under the GIL, so decoding stays thread-safe.
_INTERNED: dict[bytes, Gpu] = {}
_MAX_INTERNED = 200_000
_MAX_INTERNED_KEY_BYTES = 1_024


@functools.cache
def _batch_of_entries() -> type[Message]:
    """`PointBatchView` with its `gpus` field read as `repeated bytes`: one entry's wire bytes.

    A message field and a bytes field share the wire type (length-delimited), so parsing
    with this type hands over each GPU entry as a `bytes` object, in C: no message object
    per entry and no re-serialising it to get the cache key. Derived from the generated
    descriptor (same package, numbers and types but one), so it cannot drift from the
    `.proto`; built on first use, in its own descriptor pool.
    """
    view = descriptor_pb2.DescriptorProto()
    pb.PointBatchView.DESCRIPTOR.CopyToProto(view)
    view.name = "PointBatchEntries"
    (gpus,) = (f for f in view.field if f.name == "gpus")
    gpus.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
    gpus.ClearField("type_name")
    file = descriptor_pb2.FileDescriptorProto(
        name="gputel/telemetry/v1/entries.proto", package="gputel.telemetry.v1", syntax="proto3"
    )
    file.message_type.append(view)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("gputel.telemetry.v1.PointBatchEntries")
    )


def _interned(entries: Sequence[bytes]) -> list[Gpu]:
    """Return the label-less `Gpu` of each wire entry, shared with earlier decodes.

    Raises `DecodeError` for an entry that does not parse (only a new one can be bad).
    """
    cache = _INTERNED
    if len(cache) > _MAX_INTERNED:
        cache.clear()
    out = list(map(cache.get, entries))  # C-level: the usual entry is one seen before
    if all(out):  # (not `None not in`: that calls the dataclass's __eq__ per entry)
        return cast(list[Gpu], out)
    parse = pb.GpuView.FromString
    for i, gpu in enumerate(out):
        if gpu is None:
            key = entries[i]
            gpu = cache.get(key)  # listed twice in this batch: built just before
            if gpu is None:
                g = parse(key)
                gpu = Gpu(
                    g.uuid, g.hostname, g.gpu, g.device, g.model, g.container, g.pod, g.namespace
                )
                if len(key) <= _MAX_INTERNED_KEY_BYTES:
                    cache[key] = gpu
            out[i] = gpu
    return cast(list[Gpu], out)  # every None replaced


def _gpu_from_wire(g: pb.Gpu) -> Gpu:
    """Return the value type of one wire GPU entry, with its labels."""
    return Gpu(
        g.uuid, g.hostname, g.gpu, g.device, g.model, g.container, g.pod, g.namespace,
        dict(g.labels),
    )  # fmt: skip


def check(batch: PointBatch) -> None:
    """Raise `CodecError` unless columns have equal lengths, indexes are in range, values finite."""
    n = len(batch.time_ns)
    columns: dict[str, Sized] = {
        "gpu_index": batch.gpu_index,
        "metric_index": batch.metric_index,
        "value": batch.value,
        "source_time_ns": batch.source_time_ns,
    }
    for name, column in columns.items():
        if len(column) != n:
            raise CodecError(f"column {name} has {len(column)} entries, time_ns has {n}")
    if n == 0:
        return
    _check_index("gpu_index", batch.gpu_index, len(batch.gpus))
    _check_index("metric_index", batch.metric_index, len(batch.metrics))
    _check_finite(batch.value)


def _check_index(name: str, column: Sequence[int], size: int) -> None:
    """Raise `CodecError` unless every entry of `column` indexes a list of `size` entries."""
    low, high = min(column), max(column)
    if low < 0 or high >= size:
        bad = low if low < 0 else high
        raise CodecError(f"{name} {bad} out of range: the batch lists {size} entries")


def _check_finite(values: Sequence[float]) -> None:
    """Raise `CodecError` naming the first NaN or infinite value."""
    try:
        if math.isfinite(sum(values)):
            return  # one C-level pass: a NaN or an infinity would make the sum non-finite
    except TypeError as exc:
        raise CodecError(f"value column holds a non-number: {exc}") from exc
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise CodecError(f"value[{i}] is {v}: values must be finite")


class BatchBuilder:
    """Accumulates the points of one batch, listing each GPU and metric name once.

    GPUs are matched by object identity: the CSV reader hands out one `Gpu` object per
    descriptor, so this is one dict lookup per point. An equal but distinct `Gpu` object
    gets an entry of its own, which wastes a few bytes but decodes to the same points.
    Not thread-safe: use one builder per partition and thread.
    """

    __slots__ = ("_batch", "_gpu_slot", "_metric_slot")

    def __init__(self) -> None:
        self._batch = PointBatch()
        self._gpu_slot: dict[int, int] = {}
        self._metric_slot: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._batch.time_ns)

    def add(
        self, gpu: Gpu, metric: str, time_ns: int, value: float, source_time_ns: int = 0
    ) -> None:
        """Append one point."""
        b = self._batch
        gi = self._gpu_slot.get(id(gpu))
        if gi is None:
            gi = self._gpu_slot[id(gpu)] = len(b.gpus)
            b.gpus.append(gpu)
        mi = self._metric_slot.get(metric)
        if mi is None:
            mi = self._metric_slot[metric] = len(b.metrics)
            b.metrics.append(metric)
        b.gpu_index.append(gi)
        b.metric_index.append(mi)
        b.time_ns.append(time_ns)
        b.value.append(value)
        b.source_time_ns.append(source_time_ns)

    def build(self) -> PointBatch:
        """Return the accumulated batch and start an empty one."""
        batch = self._batch
        self._batch = PointBatch()
        self._gpu_slot = {}
        self._metric_slot = {}
        return batch

"""The GPUs a source describes, interned once: `labels_raw` is parsed once per GPU, not per row.

A row's GPU is looked up by its descriptor columns (uuid, Hostname, gpu_id, device,
modelName, container, pod, namespace) — one dict lookup per row, without reading
`labels_raw`. The first row of a GPU parses its labels (the series labels minus
`__name__`, which names the metric, not the GPU). When `uuid` or `Hostname` is empty,
the identity comes from the labels, so such rows are keyed by their label string too
(then parsed once per series).

Each GPU gets an ordinal, its partition (`partition_for(uuid)`, computed once) and,
on first use, its wire entry (`wire`): the encoded `gpus` element of a telemetry batch,
so a batch is assembled from cached bytes instead of building a label map per point.

Memory grows with the number of distinct GPUs (~1.5 KB each with 10 labels), not with
the rows. Not thread-safe: one table per streamer thread.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Mapping
from enum import IntEnum

from proto.batch import Gpu
from proto.gen import telemetry_pb2 as pb
from store.schema import tags_storable
from streamer.labels import LabelsError, parse_labels

_NO_LABELS: Mapping[str, str] = {}
_GPUS_TAG = bytes([1 << 3 | 2])  # PointBatch field 1 (`gpus`), length-delimited
_UINT32_MAX = 2**32 - 1
# What the source's decoder puts for a byte that is no UTF-8 (`streamer.source.open_csv`).
REPLACEMENT = "\ufffd"

Descriptor = tuple[str, str, str, str, str, str, str, str]  # uuid, host, gpu_id, dev, model, k8s


class Unusable(IntEnum):
    """Why a descriptor names no GPU (negative ordinals in the lookup tables)."""

    MISSING_GPU_ID = -1
    BAD_GPU_ID = -2
    NO_IDENTITY = -3
    NEEDS_LABELS = -4  # identity incomplete in the columns: look at the labels too
    BAD_GPU_FIELD = -5  # a descriptor value no store accepts (store.schema.tags_storable)
    BAD_ENCODING = -6  # a descriptor value held a byte that is no UTF-8 (read as U+FFFD)
    BAD_UUID = -7  # a uuid `/api/v1/gpus/{id}` cannot name (`uuid_addressable`)


class GpuTable:
    """Interns GPU descriptors; `ordinal` is the hot path (one dict lookup per row)."""

    def __init__(self, partition_for: Callable[[str], int]) -> None:
        self.partition_for = partition_for
        self.gpus: list[Gpu] = []
        self.partition: array[int] = array("I")
        self.bad_labels = 0  # label strings that did not parse (counted per GPU or series)
        self.by_columns: dict[Descriptor, int] = {}
        self._by_labels: dict[tuple[Descriptor, str], int] = {}
        self._ordinal: dict[tuple[object, ...], int] = {}
        self._wire: list[bytes | None] = []  # by ordinal; built on first use

    def __len__(self) -> int:
        return len(self.gpus)

    def ordinal(self, d: Descriptor, raw_labels: str) -> int:
        """Return the ordinal of the row's GPU, or a negative `Unusable` code."""
        o = self.by_columns.get(d)
        if o is None:
            o = self.by_columns[d] = self._from_columns(d, raw_labels)
        if o != Unusable.NEEDS_LABELS:
            return o
        key = (d, raw_labels)
        o = self._by_labels.get(key)
        if o is None:
            o = self._by_labels[key] = self._intern(d, self._labels(raw_labels))
        return o

    def _from_columns(self, d: Descriptor, raw_labels: str) -> int:
        """Resolve a descriptor seen for the first time (labels parsed here, once)."""
        gpu_id = d[2].strip()
        if not gpu_id:
            return Unusable.MISSING_GPU_ID
        if not gpu_id.isascii() or not gpu_id.isdigit() or int(gpu_id) > _UINT32_MAX:
            return Unusable.BAD_GPU_ID
        if not (d[0].strip() and d[1].strip()):
            return Unusable.NEEDS_LABELS
        return self._intern(d, self._labels(raw_labels))

    def _labels(self, raw: str) -> Mapping[str, str] | None:
        """Parse a label string without `__name__`; None (and counted) if malformed."""
        if not raw:
            return _NO_LABELS
        try:
            labels = parse_labels(raw)
        except LabelsError:
            self.bad_labels += 1
            return None
        labels.pop("__name__", None)  # the metric name, not a property of the GPU
        return labels

    def _intern(self, d: Descriptor, labels: Mapping[str, str] | None) -> int:
        """Return the ordinal of the GPU the descriptor and labels describe."""
        uuid, host, gpu_id, device, model, container, pod, namespace = d
        gpu = describe_gpu(
            uuid, host, int(gpu_id.strip()), device, model, container, pod, namespace,
            labels=_NO_LABELS if labels is None else labels,
        )  # fmt: skip
        if gpu is None:
            return Unusable.NO_IDENTITY
        return self.intern(gpu)

    def intern(self, gpu: Gpu) -> int:
        """The ordinal of `gpu` (equal descriptors and labels share one); `BAD_GPU_FIELD` when
        a descriptor value is longer than a tag may be or holds a control character or a
        backslash: the collector would have to refuse its whole batch; `BAD_ENCODING` when
        one held bytes that are no UTF-8 (CSV file or scraped page: both are decoded with
        U+FFFD for them, so distinct bad bytes would make one GPU)."""
        descriptor = (gpu.uuid, gpu.hostname, gpu.device, gpu.model, gpu.container, gpu.pod,
                      gpu.namespace)  # fmt: skip
        if not tags_storable(descriptor):
            return Unusable.BAD_GPU_FIELD
        if any(REPLACEMENT in v for v in descriptor):
            return Unusable.BAD_ENCODING
        if not uuid_addressable(gpu.uuid):
            return Unusable.BAD_UUID
        key = (
            gpu.uuid, gpu.hostname, gpu.gpu, gpu.device, gpu.model, gpu.container, gpu.pod,
            gpu.namespace, tuple(sorted(gpu.labels.items())),
        )  # fmt: skip
        o = self._ordinal.get(key)
        if o is None:
            o = self._ordinal[key] = len(self.gpus)
            self.gpus.append(gpu)
            self.partition.append(self.partition_for(gpu.uuid))
            self._wire.append(None)
        return o

    def wire(self, ordinal: int) -> bytes:
        """The encoded `gpus` entry of a telemetry batch for this GPU (cached)."""
        w = self._wire[ordinal]
        if w is None:
            g = self.gpus[ordinal]
            entry = pb.Gpu(
                uuid=g.uuid, hostname=g.hostname, gpu=g.gpu, device=g.device, model=g.model,
                container=g.container, pod=g.pod, namespace=g.namespace,
            )  # fmt: skip
            labels = entry.labels
            for name, value in g.labels.items():  # 2x faster than labels= (a Python update)
                labels[name] = value
            data = entry.SerializeToString()  # framed as field 1 (`gpus`) of a PointBatch
            w = self._wire[ordinal] = _GPUS_TAG + varint(len(data)) + data
        return w

    def wires(self, ordinals: list[int]) -> list[bytes]:
        """`wire` of each ordinal (one C-level lookup each once built)."""
        out = list(map(self._wire.__getitem__, ordinals))
        if None in out:
            out = [self.wire(o) if w is None else w for o, w in zip(ordinals, out, strict=True)]
        return out  # type: ignore[return-value]


def uuid_addressable(uuid: str) -> bool:
    """True when `/api/v1/gpus/{uuid}` names this GPU and no other route.

    A uuid is a path in the REST API (the fallback `hostname/index` has a slash by design), so
    its `/`-separated segments may not be empty (HTTP clients and the router merge slashes),
    `.` or `..` (browsers resolve them before sending: the web view asked for `/api/v1/gpus/`
    for a GPU named `..` and lost the whole fleet page), nor may the last one be `telemetry`
    after another (`X/telemetry` is the telemetry route of GPU `X`).
    """
    segments = uuid.split("/")
    if "" in segments or "." in segments or ".." in segments:
        return False
    return len(segments) == 1 or segments[-1] != "telemetry"


def describe_gpu(
    uuid: str,
    hostname: str,
    gpu_id: int,
    device: str,
    model: str,
    container: str,
    pod: str,
    namespace: str,
    labels: Mapping[str, str] = _NO_LABELS,
) -> Gpu | None:
    """Return the GPU a row describes (blanks filled from its labels); None without identity."""
    uuid = uuid.strip() or labels.get("UUID", "")
    hostname = hostname.strip() or labels.get("Hostname", "")
    if not uuid:
        if not hostname:
            return None
        uuid = f"{hostname}/{gpu_id}"
    return Gpu(
        uuid=uuid,
        hostname=hostname,
        gpu=gpu_id,
        device=device.strip() or labels.get("device", ""),
        model=model.strip() or labels.get("modelName", ""),
        container=container.strip() or labels.get("container", ""),
        pod=pod.strip() or labels.get("pod", ""),
        namespace=namespace.strip() or labels.get("namespace", ""),
        labels=labels,
    )


def varint(n: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative int."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)

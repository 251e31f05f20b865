"""THE telemetry schema, defined once for every store.

InfluxDB layout (one measurement, one series per GPU, two fields per metric)::

    gpu_telemetry_v2,container=..,device=nvidia0,gpu=0,hostname=h1,model=NVIDIA\\ H100,
        namespace=..,pod=..,uuid=GPU-...
        DCGM_FI_DEV_GPU_UTIL=42.0,DCGM_FI_DEV_GPU_UTIL@source_time=1700000000000000000i <time_ns>

Tags (sorted by key, as InfluxDB prefers): uuid, hostname, gpu (host-local index as a decimal
string), device, model, and container/pod/namespace only when present. An empty device,
model or hostname is omitted too (line protocol has no empty tag values) and reads back as "".
Fields, per metric: the metric's name holds the value (float), `<metric>@source_time` the
CSV's own timestamp (integer ns). The point time is the processing time in ns. Each point is
its own line; InfluxDB merges the lines of one GPU and time into one row. The SQLite store
keeps the same columns as rows (see `store.sqlite`).

Why a series per GPU, not per (GPU, metric) as the first layout (`LEGACY_MEASUREMENT`, the
metric a tag, fields `value` and `source_time`): InfluxDB holds every series of its index in
memory until a partition passes 131,072 series (1 M series were a 290 MB heap, 98 % of
influxd's), so its garbage collector marked that heap every few seconds and the pages served
meanwhile waited (the one-hour telemetry page's p99 was twice its median at 100,000 GPUs x 10
metrics, 1.25x on a server holding only the GPUs read). A series per GPU is ten times fewer
series, and a page of 1,000 points is ~100 rows instead of 1,000: measured on that fleet,
influxd's CPU a page -34 %, the gateway's -11 %, p99 at 16 connections 88-90 ms against 131
(docs/benchmarks.md). `gputel-store migrate-layout` copies data of the first layout.

Metric names may not contain `@` (it separates a metric from its source-time field; the
streamer's metric pattern has none) nor be `time` (InfluxDB refuses that field key). Tag
values may not contain control characters or backslashes: line protocol cannot escape a
trailing backslash, and InfluxDB 1.8 keeps an escaped one doubled. Such batches are rejected
by both stores with `InvalidBatch`, so both stores accept exactly the same data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from itertools import chain
from operator import attrgetter, itemgetter

from proto.batch import Gpu, PointBatch
from store.base import InvalidBatch

MEASUREMENT = "gpu_telemetry_v2"  # a series per GPU, fields per metric (see above)
LEGACY_MEASUREMENT = "gpu_telemetry"  # a series per (GPU, metric): read by the migration only
SOURCE_SUFFIX = "@source_time"  # `<metric>@source_time`: a metric's source-time field
# The catalog (store.catalog) on InfluxDB: see store.influx_catalog for the layout.
# (`_v2`: one series per shard; `_v3`: a GPU's records at times its uuid picks. Earlier
# layouts of the GPU records are no longer read; the names' layout is still the `_v2` one.)
CATALOG_MEASUREMENT = "gpu_catalog_v3"
NAMES_MEASUREMENT = "gpu_catalog_names_v2"
HOSTS_MEASUREMENT = "gpu_catalog_by_host_v3"  # the same GPU records, one series per hostname
FIELD_RECORD = "record"
FIELD_SEEN = "seen"
FIELD_LAST = "last"  # a catalog record's last_seen (ns), its own field: written alone
TAG_SHARD = "shard"
TAG_KIND = "kind"
TAG_NAME = "name"
FIELD_VALUE = "value"  # the legacy layout's fields
FIELD_SOURCE_TIME = "source_time"

TAG_UUID = "uuid"
TAG_HOSTNAME = "hostname"
TAG_GPU = "gpu"
TAG_DEVICE = "device"
TAG_MODEL = "model"
TAG_METRIC = "metric"
K8S_TAGS = ("container", "pod", "namespace")
GPU_TAGS = (TAG_UUID, TAG_HOSTNAME, TAG_GPU, TAG_DEVICE, TAG_MODEL, *K8S_TAGS)

MAX_TAG_LEN = 256
_BAD_TAG_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


GpuFields = tuple[str, str, int, str, str, str, str, str]


# The GPU's stored descriptor in GPU_TAGS order (hashable: a cache key, a table row), built
# once per `Gpu` (`Gpu.descriptor`); a C-level getter, as it runs for every GPU of a batch.
gpu_fields: Callable[[Gpu], GpuFields] = attrgetter("descriptor")


def source_field(metric: str) -> str:
    """Return the field key of `metric`'s source time."""
    return metric + SOURCE_SUFFIX


def check_metric(metric: str) -> None:
    """Raise InvalidBatch when `metric` cannot be stored as a metric name."""
    if not metric:
        raise InvalidBatch("empty metric name")
    check_tag_value(TAG_METRIC, metric)
    if "@" in metric or metric == "time":
        raise InvalidBatch(
            f"metric name {metric!r}: '@' and the name 'time' are reserved (InfluxDB field keys)"
        )


def gpu_tags(gpu: Gpu) -> dict[str, str]:
    """Return the GPU's tags by name, leaving out empty ones (uuid is always present)."""
    tags = {
        TAG_UUID: gpu.uuid,
        TAG_HOSTNAME: gpu.hostname,
        TAG_GPU: str(gpu.gpu),
        TAG_DEVICE: gpu.device,
        TAG_MODEL: gpu.model,
        "container": gpu.container,
        "pod": gpu.pod,
        "namespace": gpu.namespace,
    }
    return {k: v for k, v in tags.items() if v}


def check_tag_value(name: str, value: str) -> None:
    """Raise InvalidBatch when `value` cannot be stored as the tag `name`."""
    if len(value) > MAX_TAG_LEN:
        raise InvalidBatch(f"tag {name} longer than {MAX_TAG_LEN} characters")
    if _BAD_TAG_CHARS.search(value):
        raise InvalidBatch(f"tag {name}={value!r} holds a control character or a backslash")


def tags_storable(values: Sequence[str]) -> bool:
    """True when every value can be stored as a tag: `check_tag_value`'s rule in two C calls.

    The streamer refuses a GPU whose descriptor fails it (its rows are skipped and counted),
    so one bad row never makes a whole batch unstorable.
    """
    return max(map(len, values), default=0) <= MAX_TAG_LEN and not _BAD_TAG_CHARS.search(
        "".join(values)
    )


def check_gpu(gpu: Gpu) -> None:
    """Raise InvalidBatch when this GPU entry cannot be stored."""
    if not gpu.uuid:
        raise InvalidBatch("GPU without uuid")
    if gpu.gpu < 0:
        raise InvalidBatch(f"GPU {gpu.uuid!r} has a negative index {gpu.gpu}")
    for name, value in gpu_tags(gpu).items():
        check_tag_value(name, value)


_UUID, _INDEX = itemgetter(0), itemgetter(2)
_TAG_TEXTS = itemgetter(0, 1, 3, 4, 5, 6, 7)  # the descriptor's strings (2 is the index)
_MAX_INDEX = 10**MAX_TAG_LEN  # an index of more digits is too long a `gpu` tag


def _storable(descriptors: list[GpuFields]) -> bool:
    """True when `check_gpu` passes every GPU with these descriptors, in a few C calls.

    The same rule: a uuid, an index >= 0 of at most MAX_TAG_LEN digits, `tags_storable`
    strings (`check_gpu` skips empty ones; they pass `tags_storable` too). A real export's
    first pass brings ~25,000 new GPUs: one Python call per tag was 10 us per GPU.
    """
    indexes = list(map(_INDEX, descriptors))
    return (
        all(map(_UUID, descriptors))
        and min(indexes) >= 0
        and max(indexes) < _MAX_INDEX
        and tags_storable(list(chain.from_iterable(map(_TAG_TEXTS, descriptors))))
    )


def check_batch(batch: PointBatch, checked: set[GpuFields] | None = None) -> None:
    """Raise InvalidBatch unless every GPU, metric name and value of `batch` can be stored.

    `checked` (optional, the caller bounds it) holds descriptors that passed before: they
    are not checked again, and the ones that pass here are added.
    """
    n = len(batch.time_ns)
    columns = (batch.gpu_index, batch.metric_index, batch.value, batch.source_time_ns)
    if any(len(c) != n for c in columns):
        raise InvalidBatch("batch columns differ in length")
    if checked is None:
        for gpu in batch.gpus:
            check_gpu(gpu)
    else:
        fields = list(map(gpu_fields, batch.gpus))
        new = [] if checked.issuperset(fields) else [f for f in fields if f not in checked]
        if new and not _storable(new):
            for gpu in batch.gpus:  # one is not: find it, in order, for its error
                check_gpu(gpu)
        checked.update(new)
    for metric in batch.metrics:
        check_metric(metric)
    if n and (min(batch.gpu_index) < 0 or max(batch.gpu_index) >= len(batch.gpus)):
        raise InvalidBatch("gpu_index out of range")
    if n and (min(batch.metric_index) < 0 or max(batch.metric_index) >= len(batch.metrics)):
        raise InvalidBatch("metric_index out of range")
    if n and (min(batch.time_ns) < 0):
        raise InvalidBatch("negative time_ns")
    if not all(map(math.isfinite, batch.value)):
        raise InvalidBatch("value not a finite number")

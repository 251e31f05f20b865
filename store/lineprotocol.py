"""Fast InfluxDB line protocol for `PointBatch`: series keys are built once and cached.

`influxdb_client.Point` costs ~62 µs per point here; building each series key (measurement +
sorted, escaped tags) once per (GPU, metric) and formatting only value, source_time and time
per point is ~6x faster.
"""

from __future__ import annotations

from collections import OrderedDict

from proto.batch import Gpu, PointBatch
from store import schema

_ESCAPE_TAG = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_ESCAPE_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ "})


def escape_tag(text: str) -> str:
    """Escape a tag key or value, or a field key (commas, equals signs, spaces)."""
    return text.translate(_ESCAPE_TAG)


def escape_measurement(text: str) -> str:
    """Escape a measurement name (commas, spaces)."""
    return text.translate(_ESCAPE_MEASUREMENT)


def series_key(gpu: Gpu) -> str:
    """Return `measurement,tags` for one GPU, tags sorted by key."""
    tags = schema.gpu_tags(gpu)
    parts = [escape_measurement(schema.MEASUREMENT)]
    parts += [f"{escape_tag(k)}={escape_tag(v)}" for k, v in sorted(tags.items())]
    return ",".join(parts)


class LineProtocolEncoder:
    """Encodes batches to line protocol, caching series keys (not thread-safe: one per writer)."""

    def __init__(self, max_cached: int = 100_000) -> None:
        self._max_cached = max_cached
        self._keys: OrderedDict[tuple[schema.GpuFields, str], str] = OrderedDict()

    def _prefix(self, gpu: Gpu, metric: str) -> str:
        key = (schema.gpu_fields(gpu), metric)
        prefix = self._keys.get(key)
        if prefix is None:
            prefix = f"{series_key(gpu)} {escape_tag(metric)}="
            self._keys[key] = prefix
            if len(self._keys) > self._max_cached:
                self._keys.popitem(last=False)
        return prefix

    def encode(self, batch: PointBatch) -> bytes:
        """Return the batch as newline-separated line protocol (ns precision), UTF-8 encoded."""
        metrics = batch.metrics
        table = [[self._prefix(g, m) for m in metrics] for g in batch.gpus]
        sts = [f",{escape_tag(schema.source_field(m))}=" for m in metrics]
        lines = [
            f"{table[g][m]}{float(v)!r}{sts[m]}{s}i {t}"
            for g, m, v, s, t in zip(
                batch.gpu_index,
                batch.metric_index,
                batch.value,
                batch.source_time_ns,
                batch.time_ns,
                strict=True,
            )
        ]
        return "\n".join(lines).encode()

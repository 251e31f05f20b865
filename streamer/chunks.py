"""A chunk: a run of one partition's rows, sent as one batch; its encoding is cached.

Every pass sends the same rows with new processing times, so the streamer encodes a
chunk once (`proto.codec.encode_untimed`: GPUs, metrics, indexes, values and source
times) and on later passes only appends the time column (`with_times`). A chunk is
keyed by (partition, first row, end row) of the partition's pass; chunks start where
the previous one ended and a pass restarts at row 0, so after the first pass (or a
handover that resumed mid-chunk) the same keys come back each pass.

Memory is bounded: once the cached wire bytes reach `max_cache_bytes`, further chunks
are encoded each time instead of cached (no eviction: for a cyclic scan larger than
the cache, keeping what is cached gives the best hit rate).

Not thread-safe: one `ChunkEncoder` per streamer thread.
"""

from __future__ import annotations

from proto.codec import BatchBuilder, UntimedBatch, encode_untimed, with_times
from streamer.plan import PartitionPlan
from streamer.source import SourceRows

# Rough per-entry cost of the dict, key tuple and bytes object beyond the wire bytes.
ENTRY_OVERHEAD_BYTES = 200


class ChunkEncoder:
    """Encodes chunks of a `PartitionPlan` as telemetry batches, caching their untimed form."""

    def __init__(self, rows: SourceRows, plan: PartitionPlan, max_cache_bytes: int) -> None:
        self.rows, self.plan = rows, plan
        self.max_cache_bytes = max_cache_bytes
        self.cached_bytes = 0
        self.hits = self.misses = 0
        self._cache: dict[tuple[int, int, int], UntimedBatch] = {}

    def encode(self, partition: int, start: int, end: int, first_ns: int) -> bytes:
        """Rows [start, end) of `partition`'s pass as one batch, stamped first_ns, first_ns+1, …"""
        key = (partition, start, end)
        untimed = self._cache.get(key)
        if untimed is None:
            self.misses += 1
            untimed = self._untimed(partition, start, end)
            size = len(untimed.wire) + ENTRY_OVERHEAD_BYTES
            if self.cached_bytes + size <= self.max_cache_bytes:
                self._cache[key] = untimed
                self.cached_bytes += size
        else:
            self.hits += 1
        return with_times(untimed, range(first_ns, first_ns + end - start))

    def _untimed(self, partition: int, start: int, end: int) -> UntimedBatch:
        rows = self.rows
        gpus, metrics = rows.gpus, rows.metrics
        gpu_of, metric_of, value_of, source_of = (
            rows.gpu,
            rows.metric,
            rows.value,
            rows.source_time_ns,
        )
        builder = BatchBuilder()
        add = builder.add
        for r in self.plan.rows_of(partition)[start:end]:
            add(gpus[gpu_of[r]], metrics[metric_of[r]], 0, value_of[r], source_of[r])
        return encode_untimed(builder.build())

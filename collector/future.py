"""Points stamped too far in the future: held back from the store and dead-lettered.

One point stamped in 2099 would pin a GPU's "latest" values and `last_seen` to 2099 for
good, so a point more than `max_future_skew_s` ahead of this collector's clock is not
written. The collector is where this is decided because it is the first component that
decodes points: the broker stores batches as opaque bytes and never sees a timestamp. The
record holding such points goes to the dead-letter topic whole (reason `future_time`, the
envelope keeps its original bytes, so a replay after fixing the clock restores it; writes
are idempotent, so its other points, which are written, would only overwrite themselves).

The common case costs one `max()` over the batch's timestamps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from proto.batch import PointBatch
from store.base import MAX_FUTURE_SKEW_S

# The same bound the stores apply when they answer "latest" and last_seen.
DEFAULT_MAX_FUTURE_SKEW_S = MAX_FUTURE_SKEW_S


@dataclass(frozen=True, slots=True)
class FutureSplit:
    """The points to write and what was held back (count, newest stamp, the bound used)."""

    kept: PointBatch
    future: int
    newest_ns: int
    limit_ns: int

    def reason(self) -> str:
        """The error text for the dead-letter envelope and the log."""
        ahead_s = (self.newest_ns - self.limit_ns) / 1e9
        return (
            f"{self.future} of {self.future + len(self.kept)} points stamped more than the "
            f"allowed skew ahead of the collector's clock (newest {self.newest_ns} ns, "
            f"{ahead_s:.0f} s past the limit {self.limit_ns} ns)"
        )


def split_future(batch: PointBatch, max_skew_s: float, now_ns: int | None = None) -> FutureSplit:
    """Split `batch` into points at most `max_skew_s` ahead of now and the others."""
    limit = (time.time_ns() if now_ns is None else now_ns) + int(max_skew_s * 1e9)
    if not batch.time_ns or max(batch.time_ns) <= limit:
        return FutureSplit(batch, 0, 0, limit)
    keep = [i for i, t in enumerate(batch.time_ns) if t <= limit]
    kept = PointBatch(
        gpus=batch.gpus,
        metrics=batch.metrics,
        gpu_index=[batch.gpu_index[i] for i in keep],
        metric_index=[batch.metric_index[i] for i in keep],
        time_ns=[batch.time_ns[i] for i in keep],
        value=[batch.value[i] for i in keep],
        source_time_ns=[batch.source_time_ns[i] for i in keep],
    )
    return FutureSplit(kept, len(batch) - len(keep), max(batch.time_ns), limit)

"""The garbage-collector policy of gputel's long-running processes (streamer, collector,
gateway workers).

Their hot paths make many short-lived containers (parsed rows, per-point tuples, the
rows of a page), which reference counting frees; Python's default gen-0 threshold (700
allocations) still runs the cyclic collector every few hundred of them, and each run
traverses whatever is alive at the time: for a 247k-point import ~1,600 collections in the
collector (~8 % of its CPU), ~6 per 1,000-GPU page in a gateway worker
(docs/benchmarks.md). `tune()` freezes what start-up loaded (modules, grpc, protobuf, the
app), so full collections never walk it again, and collects the young generation every
`GEN0_THRESHOLD` allocations. Cyclic garbage is still found, a little later.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 10_000


def tune() -> None:
    """Freeze the objects alive now out of every collection; collect young ones less often.

    Call once, after start-up and before the hot path; the older generations keep their
    thresholds.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, older, oldest)

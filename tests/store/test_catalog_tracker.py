"""The catalog's write-side bookkeeping (store.catalog), without a store: which records a batch
needs, and the per-GPU spans they carry (the collector runs this on every batch)."""

from __future__ import annotations

from proto.batch import Gpu, PointBatch
from store.catalog import CatalogTracker, spans
from tests.store.helpers import T0, S, batch, gpu

UTIL, TEMP = "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP"


def test_spans_of_a_one_time_batch_and_of_a_mixed_one() -> None:
    a, b = gpu(1), gpu(2)
    one_time = batch([(a, UTIL, T0, 1.0), (b, UTIL, T0, 2.0), (a, TEMP, T0, 3.0)])
    one_time.gpus.append(gpu(3))  # listed without points: not seen
    assert spans(one_time, T0) == [(T0, T0), (T0, T0), (-1, -1)]
    assert spans(one_time, T0 - 1) == [(-1, -1)] * 3  # all stamped in the future
    mixed = batch([(a, UTIL, T0 + S, 1.0), (b, UTIL, T0, 2.0), (a, TEMP, T0 - S, 3.0)])
    assert spans(mixed, T0 + S) == [(T0 - S, T0 + S), (T0, T0)]
    assert spans(mixed, T0) == [(T0 - S, T0 - S), (T0, T0)]  # a's future point left out
    assert spans(PointBatch(gpus=[a]), T0) == [(-1, -1)]


def test_records_when_new_moved_forward_by_the_granularity_or_changed() -> None:
    tracker = CatalogTracker(granularity_ns=10 * S)
    g = gpu(1)
    first = tracker.updates(batch([(g, UTIL, T0, 1.0)]))
    assert [(r.first_seen_ns, r.last_seen_ns) for r in first.gpus] == [(T0, T0)]
    assert {(n.kind, n.name) for n in first.names} == {
        ("host", g.hostname), ("model", g.model), ("metric", UTIL),
    }  # fmt: skip
    assert tracker.updates(batch([(g, UTIL, T0 + S, 1.0)])).gpus  # not confirmed yet: again
    tracker.confirm(first)
    assert not tracker.updates(batch([(g, UTIL, T0 + 9 * S, 1.0)]))
    later = tracker.updates(batch([(g, UTIL, T0 + 10 * S, 1.0)]))
    assert [(r.anchor_ns, r.last_seen_ns) for r in later.gpus] == [(T0, T0 + 10 * S)]
    assert not later.names
    tracker.confirm(later)
    moved = Gpu(uuid=g.uuid, hostname="elsewhere", gpu=g.gpu, device=g.device, model=g.model)
    change = tracker.updates(batch([(moved, UTIL, T0 + 11 * S, 1.0)]))
    assert [(r.fields[1], r.moved) for r in change.gpus] == [
        (g.hostname, True),
        ("elsewhere", False),
    ]
    assert [(n.kind, n.name) for n in change.names] == [("host", "elsewhere")]

"""The catalog's write-side bookkeeping (store.catalog), without a store: which records a batch
needs, and the per-GPU spans they carry (the collector runs this on every batch)."""

from __future__ import annotations

import random
from dataclasses import replace

from collector.pending import merge
from proto.batch import Gpu, PointBatch
from store.catalog import REFRESH_NS, CatalogTracker, spans
from tests.store.helpers import T0, S, batch, gpu

UTIL, TEMP = "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP"
YEAR_2099 = 4_070_908_800 * S


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


def test_a_later_last_seen_alone_is_marked_and_a_whole_record_sent_each_refresh() -> None:
    tracker = CatalogTracker(granularity_ns=10 * S)
    g = gpu(1)
    first = tracker.updates(batch([(g, UTIL, T0, 1.0)]))
    assert [r.seen_only for r in first.gpus] == [False]  # new: the whole record
    tracker.confirm(first)
    t = T0
    refreshed = []
    while t < T0 + 2 * REFRESH_NS:  # two hours of a record per granularity
        t += 10 * S
        update = tracker.updates(batch([(g, UTIL, t, 1.0)]))
        [record] = update.gpus
        assert (record.first_seen_ns, record.last_seen_ns) == (T0, t)
        if not record.seen_only:
            refreshed.append(t)
        tracker.confirm(update)
    assert len(refreshed) in (1, 2)  # once per REFRESH_NS, at a phase set by the uuid
    if len(refreshed) == 2:
        assert refreshed[1] - refreshed[0] == REFRESH_NS
    older = tracker.updates(batch([(g, UTIL, T0 - S, 1.0)]))
    assert [(r.first_seen_ns, r.seen_only) for r in older.gpus] == [(T0 - S, False)]
    unconfirmed = CatalogTracker(granularity_ns=10 * S)
    unconfirmed.updates(batch([(g, UTIL, T0, 1.0)]))  # never acknowledged: whole again
    assert [r.seen_only for r in unconfirmed.updates(batch([(g, UTIL, t, 1.0)])).gpus] == [False]


def test_a_batch_with_nothing_new_is_told_apart_exactly(monkeypatch) -> None:
    """Known GPUs, same descriptors, times inside every window: no record, and any batch
    outside that case gets exactly the records the per-GPU rules give."""
    rnd = random.Random(7)
    variants = [[gpu(n), replace(gpu(n), hostname=f"moved-{n}")] for n in range(6)]
    quick, slow = CatalogTracker(granularity_ns=10 * S), CatalogTracker(granularity_ns=10 * S)
    monkeypatch.setattr(slow, "_all_quiet", lambda *_: False)
    quiet = 0
    for step in range(400):
        base = T0 + step * S
        points = [
            (rnd.choice(variants[n])if rnd.random() < 0.1 else variants[n][0], UTIL,
             base + rnd.choice([0, 0, 0, -3 * S, 5 * S]), 1.0)
            for n in rnd.sample(range(6), rnd.randint(1, 6))
        ]  # fmt: skip
        if rnd.random() < 0.05:
            points.append((variants[0][0], TEMP, YEAR_2099, 2.0))  # from the future
        update = quick.updates(batch(points))
        assert update == slow.updates(batch(points)), step
        quiet += not update.gpus
        if rnd.random() < 0.9:  # some writes are never acknowledged
            quick.confirm(update)
            slow.confirm(update)
    assert 50 < quiet < 390  # both cases were exercised


def test_a_flush_decided_record_by_record_holds_what_writing_them_one_by_one_would() -> None:
    """`updates(merged, parts)` decides each record in turn, seeing the ones before it: the
    confirmed state after it equals a tracker's that got the records one write at a time,
    and a GPU's record is whole (not `seen_only`) when an earlier record of the same flush
    was the one that would have written it whole."""
    rnd = random.Random(11)
    variants = [[gpu(n), replace(gpu(n), hostname=f"moved-{n}")] for n in range(6)]
    flushed, one_by_one = CatalogTracker(10 * S), CatalogTracker(10 * S)
    wholes = 0
    for step in range(300):
        base = T0 + step * 4 * S
        parts = []
        for _ in range(rnd.randint(1, 5)):
            base += rnd.choice([0, S, 4 * S, 11 * S, -6 * S])
            parts.append(batch(
                (rnd.choice(variants[n]) if rnd.random() < 0.1 else variants[n][0], UTIL,
                 base if rnd.random() < 0.95 else YEAR_2099, 1.0)
                for n in rnd.sample(range(6), rnd.randint(1, 6))
            ))  # fmt: skip
        update = flushed.updates(merge(parts), parts)
        singles = []
        for part in parts:
            singles.append(one_by_one.updates(part))
            one_by_one.confirm(singles[-1])
        flushed.confirm(update)
        assert dict(flushed._gpus) == dict(one_by_one._gpus), step
        assert set(flushed._names) == set(one_by_one._names), step
        current = [r for r in update.gpus if not r.moved]
        assert len({r.uuid for r in current}) == len(current)  # one record per GPU
        for r in current:
            whole = [s for u in singles for s in u.gpus if s.uuid == r.uuid and not s.seen_only]
            assert r.seen_only == (not whole), step
            wholes += bool(whole) and len(parts) > 1
    assert wholes > 50

"""`Store.latest_of`, the newest values of a page of GPUs, on a real SQLite file and InfluxDB."""

from __future__ import annotations

import pytest

from store import InvalidArgument, Store, StoredPoint
from store.influx_points import LATEST_CHUNK
from store.validate import MAX_LIMIT
from tests.store.helpers import T0, S, batch, gpu, grid

UTIL, TEMP, POWER = "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE"
YEAR_2099 = 4_070_908_800 * S


def test_the_newest_point_of_each_asked_metric_of_each_gpu(store: Store) -> None:
    a, b, c = gpu(1), gpu(2), gpu(3)
    store.write(batch([(a, UTIL, T0 + S, 2.0), (a, TEMP, T0, 40.0), (b, UTIL, T0 + 2 * S, 7.0)]))
    store.write(batch([(a, UTIL, T0, 1.0), (b, UTIL, T0 + S, 6.0)]))  # late, older points
    store.write(batch([(c, TEMP, T0, 50.0)]))  # c has no UTIL
    asked = [a.uuid, b.uuid, c.uuid, "GPU-unknown"]
    assert store.latest_of(asked, [UTIL]) == {
        a.uuid: {UTIL: StoredPoint(UTIL, T0 + S, 2.0, T0)},
        b.uuid: {UTIL: StoredPoint(UTIL, T0 + 2 * S, 7.0, T0 + S)},
    }
    assert store.latest_of(asked, [UTIL, TEMP])[a.uuid] == {
        UTIL: StoredPoint(UTIL, T0 + S, 2.0, T0),
        TEMP: StoredPoint(TEMP, T0, 40.0, T0 - S),
    }
    assert store.latest_of(asked, [POWER]) == {}
    assert store.latest_of(["GPU-unknown"], [UTIL]) == {}
    assert store.latest_of([], [UTIL]) == {}


def test_all_metrics_when_none_asked_as_latest_reads_them(store: Store) -> None:
    gpus = [gpu(n) for n in range(5)]
    store.write(grid(gpus, [UTIL, TEMP, POWER], [T0, T0 + S]))
    found = store.latest_of([g.uuid for g in gpus])
    assert found == {g.uuid: store.latest(g.uuid) for g in gpus}
    assert set(found[gpus[0].uuid]) == {UTIL, TEMP, POWER}


def test_a_page_larger_than_one_statement_answers_every_gpu(store: Store) -> None:
    """InfluxDB reads LATEST_CHUNK uuids a statement: a page spans several, in one request."""
    gpus = [gpu(n) for n in range(LATEST_CHUNK * 2 + 7)]
    store.write(grid(gpus, [UTIL, TEMP], [T0, T0 + S]))
    page = [g.uuid for g in reversed(gpus)] + [gpus[0].uuid]  # any order; a repeat is one
    found = store.latest_of(page, [UTIL])
    assert len(found) == len(gpus)
    for i, g in enumerate(gpus):
        assert found[g.uuid] == {UTIL: StoredPoint(UTIL, T0 + S, 1.0, T0)}, i


def test_metrics_missing_from_the_newest_time_are_read_by_themselves(store: Store) -> None:
    """On InfluxDB a GPU's newest row answers first; metrics it lacks are read one by one,
    for more GPUs than one statement holds."""
    gpus = [gpu(n) for n in range(LATEST_CHUNK + 3)]
    store.write(grid(gpus, [UTIL, TEMP, POWER], [T0]))
    store.write(grid(gpus, [UTIL], [T0 + S]))  # the newest time holds UTIL only
    every = {
        UTIL: StoredPoint(UTIL, T0 + S, 1.0, T0),
        TEMP: StoredPoint(TEMP, T0, 0.1, T0 - S),
        POWER: StoredPoint(POWER, T0, 0.2, T0 - S),
    }
    uuids = [g.uuid for g in gpus]
    assert store.latest_of(uuids) == {u: every for u in uuids}
    assert store.latest_of(uuids, [TEMP, UTIL]) == {
        u: {TEMP: every[TEMP], UTIL: every[UTIL]} for u in uuids
    }


def test_a_point_from_the_future_is_never_the_newest(store: Store) -> None:
    a, b = gpu(1), gpu(2)
    store.write(batch([(a, UTIL, T0, 1.0), (b, UTIL, T0, 3.0)]))
    store.write(batch([(a, UTIL, YEAR_2099, 2.0), (b, TEMP, YEAR_2099, 9.0)]))
    assert store.latest_of([a.uuid, b.uuid], [UTIL, TEMP]) == {
        a.uuid: {UTIL: StoredPoint(UTIL, T0, 1.0, T0 - S)},
        b.uuid: {UTIL: StoredPoint(UTIL, T0, 3.0, T0 - S)},
    }


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.latest_of("GPU-0001", [UTIL]),  # one string, not a page
        lambda s: s.latest_of([""], [UTIL]),
        lambda s: s.latest_of(["GPU-0001"], []),
        lambda s: s.latest_of(["GPU-0001"], "DCGM_FI_DEV_GPU_UTIL"),
        lambda s: s.latest_of(["GPU\n0001"], [UTIL]),
        lambda s: s.latest_of([f"GPU-{n}" for n in range(MAX_LIMIT + 1)], [UTIL]),
    ],
)
def test_bad_pages_are_rejected(store: Store, call) -> None:
    with pytest.raises(InvalidArgument):
        call(store)

"""Points stamped in the future: dead-lettered by the collector, never "latest" or `last_seen`.

A careless streamer (a host clock set to 2099, a CSV from a broken exporter) publishes a
record whose points are partly far in the future. The real collector process writes its
other points, sends the record whole to the dead-letter topic with reason `future_time`,
and everything well-behaved publishers sent is stored exactly. Stores holding future points
from before (written before this bound existed) still never answer them as the newest.
"""

from __future__ import annotations

import time

import pytest

from proto.batch import Gpu
from proto.codec import BatchBuilder, encode
from store import Store
from tests.collector.helpers import (
    METRICS,
    StoreTarget,
    Telemetry,
    lag,
    make_gpus,
    wait_exact,
    wait_for,
)
from tests.collector.test_dead_letters import publish_raw, read_dead_letters
from walbroker.types import partition_for_key

S = 1_000_000_000
YEAR_2099_NS = 4_070_908_800 * S  # 2099-01-01T00:00:00Z
SKEW_S = 300


def careless_record(gpu: Gpu, now_ns: int) -> bytes:
    """Two points now, one 10 s ahead (within the skew), two in 2099 and one 1 h ahead."""
    b = BatchBuilder()
    for metric, t in (
        (METRICS[0], now_ns),
        (METRICS[1], now_ns),
        (METRICS[2], now_ns + 10 * S),
        (METRICS[0], YEAR_2099_NS),
        (METRICS[1], YEAR_2099_NS + S),
        (METRICS[2], now_ns + 3600 * S),
    ):
        b.add(gpu, metric, t, 42.0, t)
    return encode(b.build())


def test_future_points_are_dead_lettered_and_the_rest_is_stored(
    broker, collectors, sqlite_target: StoreTarget
) -> None:
    good = Telemetry(broker.address)
    careless = make_gpus(1, 1, tag="careless")[0]
    c = collectors(sqlite_target)
    good.publish(range(20))
    now = time.time_ns()
    partition = partition_for_key(careless.uuid, 4)
    payload = careless_record(careless, now)
    at = publish_raw(broker.address, partition, payload, 6)
    good.publish(range(20, 40))  # behind it, on every partition

    expected = {**good.expected(), **{(careless.uuid, m): 1 for m in METRICS}}
    with sqlite_target.open() as store:
        assert wait_exact(store, expected, 30) == expected  # nothing well-behaved lost
        gpu = store.get_gpu(careless.uuid)
        assert gpu is not None and gpu.last_seen_ns == now + 10 * S
        assert {m: p.time_ns for m, p in store.latest(careless.uuid).items()} == {
            METRICS[0]: now,
            METRICS[1]: now,
            METRICS[2]: now + 10 * S,
        }
    assert wait_for(lambda: set(lag(broker.address).values()) == {0}, 10), lag(broker.address)
    (letter,) = read_dead_letters(broker.address, 1)
    header, original = letter
    assert (header["partition"], header["base_offset"], header["reason"]) == (
        partition,
        at,
        "future_time",
    )
    assert header["error"].startswith("3 of 6 points stamped more than")
    assert original == payload
    assert c.metric('gpu_telemetry_collector_dead_lettered_total{reason="future_time"}') == 3
    assert c.log().count("record sent to the dead-letter topic") == 1
    assert c.terminate() == 0


@pytest.fixture(params=["sqlite", "influx"])
def store(request: pytest.FixtureRequest, tmp_path) -> Store:
    if request.param == "sqlite":
        target = StoreTarget.sqlite(tmp_path / "t.db")
    else:
        target = StoreTarget.influx(request.getfixturevalue("influx_server").create_database())
    with target.open() as opened:
        yield opened


def test_stored_future_points_are_never_latest_or_last_seen(store: Store) -> None:
    """Points written before the collector's bound existed (or by another writer)."""
    gpu = make_gpus(1, 1, tag="old")[0]
    now = time.time_ns() // S * S
    b = BatchBuilder()
    for metric, t in (
        (METRICS[0], now - 60 * S),
        (METRICS[0], now),
        (METRICS[0], YEAR_2099_NS),  # newer than `now`: would be the latest
        (METRICS[1], now - 30 * S),
        (METRICS[2], YEAR_2099_NS),  # a metric with only a future point
    ):
        b.add(gpu, metric, t, float(t % 1000), t)
    store.write(b.build())
    latest = store.latest(gpu.uuid)
    assert {m: p.time_ns for m, p in latest.items()} == {METRICS[0]: now, METRICS[1]: now - 30 * S}
    found = store.get_gpu(gpu.uuid)
    assert found is not None and (found.first_seen_ns, found.last_seen_ns) == (now - 60 * S, now)
    assert [g.last_seen_ns for g in store.list_gpus() if g.uuid == gpu.uuid] == [now]
    # A GPU seen only in the future is not listed (it has no point a reader may call newest).
    only = make_gpus(1, 1, tag="only-future")[0]
    b = BatchBuilder()
    b.add(only, METRICS[0], YEAR_2099_NS, 1.0, YEAR_2099_NS)
    store.write(b.build())
    assert store.get_gpu(only.uuid) is None and store.latest(only.uuid) == {}
    assert only.uuid not in {g.uuid for g in store.list_gpus()}

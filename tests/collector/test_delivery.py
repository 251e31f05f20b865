"""Exactly the published points end up stored, across kill -9 and scaling (real processes)."""

from __future__ import annotations

import random
import time

import grpc

from tests.collector.helpers import Telemetry, lag, wait_exact, wait_for

RECEIVED = "gpu_telemetry_collector_messages_received_total"


def test_kill_9_mid_run_loses_nothing_and_duplicates_nothing(broker, collectors, target):
    data = Telemetry(broker.address)
    join = data.in_background(range(240), pace_s=0.015)  # 96 points per tick, ~4 s
    c = collectors(target)
    rng = random.Random(5)
    for _ in range(3):
        # Working, or nothing left to deliver to it (on a slow machine the ~4-s run can end
        # and be committed before the third collector starts: it is then killed idle).
        assert wait_for(lambda c=c: c.metric(RECEIVED) > 0 or all_committed(broker), 20), c.log()
        time.sleep(rng.uniform(0.3, 0.8))  # mid-run: records held, written, being committed
        c.kill()
        c = collectors(target)
    join()
    with target.open() as store:
        counts = wait_exact(store, data.expected())
    assert counts == data.expected()
    assert wait_for(lambda: set(lag(broker.address).values()) == {0}, 10), lag(broker.address)
    c.wait_ready()  # the last one may still be starting when the earlier ones stored it all
    assert c.terminate() == 0


def all_committed(broker) -> bool:
    """True when the collectors' group has committed every published point."""
    try:
        return set(lag(broker.address).values()) == {0}
    except grpc.RpcError:  # no group yet
        return False


def test_scale_one_three_one_during_a_run(broker, collectors, sqlite_target):
    data = Telemetry(broker.address)
    join = data.in_background(range(300), pace_s=0.02)  # ~6 s
    first = collectors(sqlite_target)
    time.sleep(1.5)
    extra = [collectors(sqlite_target), collectors(sqlite_target)]
    for c in extra:  # in the group (a loaded machine can take seconds to start them)
        c.wait_ready()
    for c in extra:
        assert c.terminate() == 0, c.log()
    join()
    with sqlite_target.open() as store:
        counts = wait_exact(store, data.expected())
    assert counts == data.expected()
    assert wait_for(lambda: set(lag(broker.address).values()) == {0}, 10)
    assert first.metric("gpu_telemetry_collector_messages_flushed_total") > 0
    assert first.terminate() == 0

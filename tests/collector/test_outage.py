"""InfluxDB taken away mid-run: not ready, lag grows, nothing lost, catches up by itself."""

from __future__ import annotations

import time

from tests.collector.helpers import StoreTarget, Telemetry, lag, wait_exact, wait_for

OUTAGE_S = 12.0


def test_influx_outage_makes_the_collector_unready_and_it_catches_up(
    broker, collectors, influx_server
):
    target = StoreTarget.influx(influx_server.create_database())
    data = Telemetry(broker.address)
    c = collectors(target)
    c.wait_ready()
    data.publish(range(20))
    with target.open() as store:
        assert wait_exact(store, data.expected(), 20) == data.expected()
    influx_server.stop()
    try:
        join = data.in_background(range(20, 120), pace_s=0.03)  # published during the outage
        assert wait_for(lambda: c.get("/readyz")[0] == 503, OUTAGE_S), c.log()
        _, body = c.get("/readyz")
        assert '"store_up": false' in body
        assert c.get("/healthz")[0] == 200  # alive, just not ready
        join()
        assert sum(lag(broker.address).values()) > 0  # the data waits in the broker
        assert c.metric("gpu_telemetry_collector_store_up") == 0
        assert c.metric('gpu_telemetry_collector_write_errors_total{kind="unavailable"}') >= 3
        time.sleep(max(0.0, OUTAGE_S - 8))
    finally:
        influx_server.start()
    c.wait_ready(30)
    with target.open() as store:
        counts = wait_exact(store, data.expected(), 30)
    assert counts == data.expected()
    assert wait_for(lambda: set(lag(broker.address).values()) == {0}, 10)
    assert c.metric("gpu_telemetry_collector_store_up") == 1
    assert c.terminate() == 0

"""One client publishing 1 MiB batches flat out: throttled to its byte rate, others unaffected.

`--client-publish-bytes-per-s` charges each client (here: its token) for the payload
it publishes; over the rate, the broker reads its stream no faster (Kafka's quota
throttling), so the flood neither takes the writer from the well-behaved client nor
gets an error or loses anything itself.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import Any

from tests.fixtures.secure import Credentials
from tests.hostile.support import (
    GOOD_TOPIC,
    GoodClient,
    assert_unaffected,
    scrape,
    send_flat_out,
)
from walbroker.credentials import ClientSecurity
from walbroker.producer import Producer

MiB = 1024 * 1024
RATE = 8 * MiB  # bytes/s per client
BATCH = 1 * MiB
FLOOD_S = 8.0


def _flood(address: str, security: ClientSecurity, out: Any) -> None:
    """The greedy client (own process): 1 MiB batches as fast as the broker takes them."""
    payload = os.urandom(BATCH)
    with Producer(
        address, "flood", lambda xs: b"", security=security, max_in_flight_bytes=16 * BATCH
    ) as p:
        t0 = time.monotonic()
        n = send_flat_out(p, payload, FLOOD_S)
        p.flush(120)
        out.put((time.monotonic() - t0, p.stats.acked_points // 1000 * BATCH, n))


def test_a_flooding_client_is_throttled_to_its_rate_and_others_keep_theirs(
    broker_factory, tmp_path
):
    creds = Credentials(tmp_path / "creds")
    creds.add("good", "produce,consume")
    creds.add("greedy", "produce")
    broker = broker_factory(
        "--topic", f"{GOOD_TOPIC}:8", "--topic", "flood:4",
        "--client-publish-bytes-per-s", str(RATE), *creds.broker_args(tls=False),
    ).start()  # fmt: skip
    good = GoodClient(broker.address, security=creds.client("good", tls=False))
    baseline = good.baseline(1.5)

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    flood = ctx.Process(
        target=_flood, args=(broker.address, creds.client("greedy", tls=False), out)
    )
    flood.start()
    try:
        time.sleep(1.5)  # the flood is on
        assert_unaffected(baseline, lambda: good.publish_for(1.5))
        seconds, acked_bytes, sent = out.get(timeout=180)
    finally:
        flood.join(30)
        if flood.is_alive():
            flood.kill()
    assert flood.exitcode == 0
    # Everything it sent was taken (late, never refused), at no more than its rate plus
    # one second of burst.
    assert acked_bytes == sent * BATCH
    assert acked_bytes <= RATE * (seconds + 1) + BATCH, (acked_bytes, seconds)
    assert acked_bytes >= 0.5 * RATE * seconds, (acked_bytes, seconds)  # throttled, not starved
    assert scrape(broker.metrics_url, "gpu_telemetry_broker_publish_throttled_total") > 0
    assert scrape(broker.metrics_url, "gpu_telemetry_broker_publish_throttle_seconds_total") > 1
    good.assert_nothing_lost()

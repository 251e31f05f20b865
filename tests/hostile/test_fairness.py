"""One client flooding the broker does not starve a polite one, with the default flags.

The greedy client pipelines 1 MiB batches on 8 Publish streams from a process of its
own; the polite one publishes a 500-point batch every 100 ms on one stream and waits
for each ack. Before the log writer served each client in turn, the polite batch
queued behind the flood's backlog (64 MiB, about a second of the writer): it got one
batch in per second instead of ten. Each client has its own token: on one host the
broker tells clients apart by their credential (without authentication, by address).
"""

from __future__ import annotations

import multiprocessing as mp

from tests.fixtures.secure import Credentials
from tests.hostile.support import GOOD_TOPIC, PacedClient, flood, scrape
from tests.hostile.test_requests import end_offsets

FLOOD_STREAMS = 8
FLOOD_S = 12.0


def test_a_polite_client_keeps_its_rate_while_another_floods_the_writer(broker_factory, tmp_path):
    creds = Credentials(tmp_path / "creds")
    creds.add("polite", "produce,consume")
    creds.add("greedy", "produce")
    broker = broker_factory(
        "--topic", f"{GOOD_TOPIC}:8", "--topic", "flood:8", *creds.broker_args(tls=False)
    ).start()  # fmt: skip
    polite = PacedClient(broker.address, creds.client("polite", tls=False))
    alone = polite.publish_for(3.0)

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    greedy = creds.client("greedy", tls=False)
    proc = ctx.Process(target=flood, args=(broker.address, greedy, FLOOD_STREAMS, FLOOD_S, out))
    proc.start()
    try:
        # The flood is on once the writer has a backlog of it (seconds on a loaded machine).
        while scrape(broker.metrics_url, "gpu_telemetry_broker_queue_bytes") < 16 * 2**20:
            assert proc.is_alive()
        during = polite.publish_for(5.0)
        sent, acked = out.get(timeout=300)
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == 0
    # 10 batches/s alone; 1 a second behind the flood's backlog before the fix, ~10 now.
    assert during >= 0.5 * alone, (during, alone)
    assert acked == sent > 0  # the flood got everything in too, late rather than refused
    assert sum(end_offsets(broker.address, GOOD_TOPIC, polite.security)) == polite.acked_points

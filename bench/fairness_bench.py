"""Fairness under default flags: a polite producer's ack latency while another floods the broker.

The greedy client pipelines 1 MiB batches on `streams` Publish streams from a process
of its own (`tests.hostile.support.flood`); the polite one publishes a 500-point batch
every 20 ms on one stream and waits for each ack (`PacedClient`). Each has its own
token: on one host the broker tells clients apart by their credential. The figures are
the polite client's batches/s and ack latency alone and during the flood, and the
flood's throughput.

    python -m bench.fairness_bench [streams] [seconds] [extra walbroker serve flags...]
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.fixtures.broker import BrokerProcess
from tests.fixtures.secure import Credentials
from tests.hostile.support import PacedClient, flood

MiB = 1024 * 1024


def _figures(client: PacedClient, seconds: float) -> dict[str, float]:
    client.latencies_s.clear()
    rate = client.publish_for(seconds)
    lat = sorted(client.latencies_s)
    return {
        "batches_per_s": round(rate, 1),
        "p50_ms": round(statistics.median(lat) * 1000, 1),
        "p99_ms": round(lat[int(0.99 * (len(lat) - 1))] * 1000, 1),
        "max_ms": round(lat[-1] * 1000, 1),
    }


def run(streams: int = 8, seconds: float = 10.0, *broker_args: str) -> dict[str, Any]:
    """The polite client alone, then during the flood."""
    with tempfile.TemporaryDirectory() as tmp:
        creds = Credentials(Path(tmp) / "creds")
        creds.add("polite", "produce")
        creds.add("greedy", "produce")
        broker = BrokerProcess(
            Path(tmp) / "data", "--topic", "good:8", "--topic", "flood:8",
            *creds.broker_args(tls=False), *broker_args,
        ).start()  # fmt: skip
        try:
            polite = PacedClient(broker.address, creds.client("polite", tls=False), period_s=0.02)
            alone = _figures(polite, 3.0)
            ctx = mp.get_context("spawn")
            out = ctx.Queue()
            greedy = creds.client("greedy", tls=False)
            proc = ctx.Process(target=flood, args=(broker.address, greedy, streams, seconds, out))
            proc.start()
            try:
                time.sleep(2.0)  # the flood is on
                during = _figures(polite, seconds - 3.0)
                _sent, acked = out.get(timeout=300)
            finally:
                proc.join(30)
                if proc.is_alive():
                    proc.kill()
        finally:
            broker.stop(10)
    return {
        "alone": alone,
        "during_flood": during,
        "flood_mib_per_s": round(acked / MiB / seconds, 1),
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    print(run(int(args[0]) if args else 8, float(args[1]) if len(args) > 1 else 10.0, *args[2:]))

"""kill -9 of the broker under load: every acknowledged batch survives exactly once."""

from __future__ import annotations

import random
import threading
import time

from proto.gen import walbroker_pb2 as pb
from tests.walbroker.helpers import assert_contiguous, drain, encode, item
from walbroker.inflight import Batch
from walbroker.producer import Producer

PRODUCERS = 4
KILLS = 4


def test_acknowledged_batches_survive_repeated_kill_9(broker):
    stop = threading.Event()
    sent = [0] * PRODUCERS
    acked = [0] * PRODUCERS
    errors: list[BaseException] = []

    def produce(i: int) -> None:
        def on_ack(batch: Batch, ack: pb.PublishAck) -> None:
            acked[i] += batch.count

        try:
            with Producer(
                broker.address, "crash", encode, batch_size=100, linger_ms=2, on_ack=on_ack
            ) as p:
                n = 0
                while not stop.is_set():
                    p.send(f"gpu-{(i * 7 + n) % 29}", item(i, n))
                    n += 1
                    if n % 100 == 0:
                        time.sleep(0.01)
                sent[i] = n
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(PRODUCERS)]
    for t in threads:
        t.start()
    rng = random.Random(7)
    acked_before_kill = []
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.4, 1.0))
        acked_before_kill.append(sum(acked))
        broker.restart()  # kill -9, then start again on the same data dir and port
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(120)
    assert not errors, errors
    # the kills really happened under load: acknowledgements kept arriving between them
    assert acked_before_kill == sorted(set(acked_before_kill)) and acked_before_kill[0] > 0
    expected = {item(i, n) for i in range(PRODUCERS) for n in range(sent[i])}
    assert sum(acked) == len(expected)
    print(f"points={len(expected)} acked_before_each_kill={acked_before_kill}")
    seen, records = drain(broker.address, "crash", len(expected))
    assert set(seen) == expected, f"missing {len(expected - set(seen))} points"
    duplicates = {k: v for k, v in seen.items() if v > 1}
    assert not duplicates, f"{len(duplicates)} points appended twice"
    assert_contiguous(records)

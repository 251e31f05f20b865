"""A full disk budget: `block` holds producers back and loses nothing; `drop-oldest` counts."""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.request
from collections import Counter

import pytest

from tests.walbroker.helpers import decode, encode, item
from walbroker import producer as producer_module
from walbroker.consumer import Consumer
from walbroker.errors import BrokerError, Code
from walbroker.producer import Producer

POINTS = 6_000  # 8 bytes each: ~48 KB of payload against a 16 KB budget


def scrape(url: str, name: str) -> float:
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", body, re.M))


def test_block_policy_pushes_back_and_loses_nothing(broker_factory):
    broker = broker_factory("--topic", "bp:2", "--retention-bytes", "16000").start()
    pushed_back: list[BrokerError] = []
    seen: Counter[int] = Counter()
    stop = threading.Event()
    consumer = Consumer(broker.address, "drain", "bp", max_unacked_points=2_000).start()

    def consume() -> None:
        while not stop.is_set():
            for m in consumer.poll(0.2):
                seen.update(decode(m))
            consumer.commit()

    reader = threading.Thread(target=consume)
    reader.start()
    try:
        with Producer(
            broker.address,
            "bp",
            encode,
            batch_size=100,
            linger_ms=2,
            on_backpressure=pushed_back.append,
        ) as p:
            for n in range(POINTS):
                p.send(str(n % 13), item(0, n))
        assert pushed_back, "the producer was never told the budget is full"
        assert all(
            e.code in (Code.RESOURCE_EXHAUSTED, Code.FAILED_PRECONDITION) for e in pushed_back
        )
        assert any(e.code == Code.RESOURCE_EXHAUSTED for e in pushed_back)
        deadline_ok = threading.Event()
        for _ in range(100):
            if len(seen) >= POINTS:
                deadline_ok.set()
                break
            stop.wait(0.1)
    finally:
        stop.set()
        reader.join(10)
        consumer.close()
    assert set(seen) == {item(0, n) for n in range(POINTS)}
    assert max(seen.values()) == 1
    assert scrape(broker.metrics_url, "gpu_telemetry_broker_publish_rejected_total") > 0
    assert scrape(broker.metrics_url, "gpu_telemetry_broker_log_bytes") <= 16_000


def test_drop_oldest_deletes_and_counts(broker_factory):
    broker = broker_factory(
        "--topic", "bp:2", "--retention-bytes", "16000", "--retention-policy", "drop-oldest"
    ).start()
    pushed_back: list[BrokerError] = []
    with Producer(
        broker.address,
        "bp",
        encode,
        batch_size=100,
        linger_ms=2,
        on_backpressure=pushed_back.append,
    ) as p:
        for n in range(POINTS):
            p.send(str(n % 13), item(0, n))
    assert not pushed_back, [(e.code.name, e.message) for e in pushed_back]
    deleted = scrape(broker.metrics_url, "gpu_telemetry_broker_retention_deleted_points_total")
    enqueued = scrape(broker.metrics_url, "gpu_telemetry_broker_messages_enqueued_total")
    start = scrape(broker.metrics_url, "gpu_telemetry_broker_log_start_offset")
    assert enqueued == POINTS
    assert deleted > 0 and deleted == start  # every deleted point moved a log start forward


def test_producer_bounds_the_bytes_in_flight_while_the_broker_is_down(broker):
    p = Producer(
        broker.address,
        "bp",
        lambda items: b"x" * 1000 * len(items),
        batch_size=1,
        max_in_flight_bytes=10_000,
        max_pending_points=10**6,
    ).start()
    try:
        broker.kill()
        sent = 0
        with pytest.raises(TimeoutError):
            for n in range(100):
                p.send(str(n), n, timeout_s=0.5)
                sent += 1
        assert sent == 10  # ten 1,000-byte batches fill the 10,000-byte bound
        broker.start()
        p.flush(30)  # everything held back is delivered once the broker is back
        assert p.stats.acked_points == sent
    finally:
        p.close()


def test_a_producer_without_an_encoder_sends_batches_and_refuses_items(broker):
    """The streamer's shape: whole encoded batches only; an item would have no encoder."""
    with Producer(broker.address, "no-encoder") as p:
        p.send_batch(0, encode([1, 2, 3]), 3)
        with pytest.raises(TypeError, match="send_batch"):
            p.send("k", 4)
    c = Consumer(broker.address, "reader", "no-encoder").start()
    try:
        got: list[int] = []
        for _ in range(20):
            for m in c.poll(1.0):
                got += decode(m)
            if got:
                break
        assert got == [1, 2, 3]
    finally:
        c.close()


def test_a_long_refusal_is_a_warning_and_its_end_too(broker_factory, monkeypatch, caplog):
    """Each refusal is an info line; `gputel-up` on a terminal shows warnings only, so a full
    broker stalled an import there without a word. One warning per stall, one when it ends."""
    monkeypatch.setattr(producer_module, "STALL_WARNING_S", 0.5)
    broker = broker_factory("--topic", "bp:2", "--retention-bytes", "16000").start()
    caplog.set_level(logging.INFO, logger="walbroker.producer")
    with Producer(broker.address, "bp", encode, batch_size=100, linger_ms=2) as p:
        for n in range(POINTS):  # more than the budget: refused until a consumer commits
            p.send(str(n % 13), item(0, n))
        deadline = time.monotonic() + 30
        while not any("has taken nothing" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "no warning while the budget was full"
            time.sleep(0.1)
        consumer = Consumer(broker.address, "drain", "bp", max_unacked_points=2_000).start()
        seen: Counter[int] = Counter()
        try:
            while len(seen) < POINTS:
                assert time.monotonic() < deadline + 30, len(seen)
                for m in consumer.poll(0.2):
                    seen.update(decode(m))
                consumer.commit()
        finally:
            consumer.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "has taken nothing" in w]) == 1, warnings
    assert "disk budget" in warnings[0] and "RESOURCE_EXHAUSTED" in warnings[0]
    assert any("takes batches again" in w for w in warnings), warnings

"""What only Kafka has to prove: the streamer's fencing, and lag across transaction markers."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import KafkaException

from gputel.transport.factory import Transport
from tests.support import wait_until
from tests.transport.backends import Backend, Link, consumer, create_kafka_topic, drain, group
from tests.transport.backends import quiet as nothing_within
from walbroker.errors import Fenced


@pytest.fixture
def kafka(kafka1) -> Backend:
    return Backend("kafka", Transport.of(kafka1.url))


def test_a_second_streamer_fences_the_first_and_no_batch_is_doubled_or_lost(kafka: Backend):
    topic = kafka.topic(2)
    g = group()
    first = Link(kafka.transport, g, topic).start()
    for i in range(3):
        first.producer.send_batch(0, f"first {i}".encode() * 4, 10)
    first.producer.flush(30)
    first.producer.send_batch(0, b"maybe open" * 4, 10)  # committed by its loop, or aborted

    second = Link(kafka.transport, g, topic).start()  # started by mistake, same job
    resumed = second.positions[0]
    assert resumed in (30, 40) and second.positions[1] == 0, "resumes at the committed progress"
    with pytest.raises(Fenced, match="another streamer took over"):  # at once, or at commit
        first.producer.send_batch(1, b"after the fence" * 4, 10)
        first.producer.flush(30)
    with pytest.raises(Fenced):
        first.producer.send_batch(1, b"after the fence" * 4, 10)
    assert first.member.failure is not None
    # librdkafka answers every call after a fatal error with a generic _FATAL: still Fenced
    with pytest.raises(KafkaException) as raw:
        first.producer._producer.produce(topic, b"x", partition=0)  # type: ignore[attr-defined]
    assert isinstance(first.producer._fatal_or(raw.value), Fenced)  # type: ignore[attr-defined]
    second.producer.send_batch(0, b"second 0" * 4, 10)
    second.producer.flush(30)
    assert second.member.progress() == {0: resumed + 10, 1: 0}
    second.close()

    c = consumer(kafka.transport, group(), topic)
    try:
        got = drain(c, resumed + 10)
        assert not nothing_within(c, 1.0)
    finally:
        c.close()
    firsts = [f"first {i}".encode() * 4 for i in range(3)] + [b"maybe open" * 4]
    assert [r.payload for r in got] == [*firsts[: resumed // 10], b"second 0" * 4]


def test_lag_drains_to_zero_although_transaction_markers_take_offsets(kafka: Backend):
    topic = kafka.topic(2)
    link = Link(kafka.transport, group(), topic).start()
    for i in range(4):  # four transactions: each leaves a marker after its batch
        link.producer.send_batch(i % 2, b"x" * 64, 10)
        link.producer.flush(30)
    link.close()
    c = consumer(kafka.transport, group(), topic)
    try:
        got = drain(c, 40)
        assert wait_until(lambda: bool(c.poll(0.1)) or c.lag() == {0: 4, 1: 4}, 10), c.lag()
        stored = {p: max(r.next_offset for r in got if r.partition == p) for p in (0, 1)}
        assert c.commit(stored)
        assert wait_until(lambda: bool(c.poll(0.1)) or c.lag() == {0: 0, 1: 0}, 10), c.lag()
    finally:
        c.close()


def test_a_missing_topic_is_named_with_what_to_do(kafka: Backend, kafka1):
    from gputel.transport import factory
    from walbroker.errors import NotFound

    with pytest.raises(NotFound, match="does not exist on the Kafka cluster"):
        factory.record_producer(kafka.transport, "never-created")
    late = f"created-late-{group()}"
    link = Link(kafka.transport, group(), late)
    with pytest.raises(NotFound, match="create it"):
        link.producer.start(timeout_s=1.0)  # waits for it a moment, then says what to do
    create_kafka_topic(kafka1.bootstrap, late, 1)
    factory.record_producer(kafka.transport, late).close(5)
    link.start()  # the streamer's retry goes on where it stopped (transactions initialised)
    link.producer.send_batch(0, b"x" * 16, 1)
    link.producer.flush(30)
    assert link.member.progress() == {0: 1}
    link.close()


def test_the_collector_dead_letters_an_undecodable_batch_and_its_partition_flows_on(
    kafka: Backend, kafka1, tmp_path
):
    """On Kafka too: garbage goes to `<topic>.dlq` byte for byte, the rest is stored."""
    import threading

    from prometheus_client import CollectorRegistry

    from collector.config import CollectorConfig
    from collector.deadletter import unwrap
    from collector.metrics import CollectorMetrics
    from collector.runner import Collector
    from proto.batch import Gpu
    from proto.codec import BatchBuilder, encode
    from store import open_store

    topic = kafka.topic(2)
    create_kafka_topic(kafka1.bootstrap, f"{topic}.dlq", 2)
    gpu = Gpu(uuid="GPU-dlq-0", hostname="h1", gpu=0)

    def batch(first: int) -> bytes:
        b = BatchBuilder()
        for i in range(first, first + 5):
            b.add(gpu, "DCGM_FI_DEV_GPU_TEMP", 1_700_000_000_000_000_000 + i, float(i))
        return encode(b.build())

    link = Link(kafka.transport, group(), topic).start()
    link.producer.send_batch(1, batch(0), 5)
    link.producer.send_batch(1, b"\xff\x00 not a batch", 7)
    link.producer.send_batch(1, batch(5), 5)
    link.close()

    db = f"sqlite:{tmp_path / 'store.db'}"
    config = CollectorConfig(
        broker=kafka1.url, store=db, topic=topic, group=group(), flush_ms=100, metrics_listen=""
    )
    registry = CollectorRegistry()
    with open_store(db) as store:
        collector = Collector(config, store, CollectorMetrics(registry))
        runner = threading.Thread(target=collector.run)
        runner.start()
        try:
            assert wait_until(lambda: sum(store.count_points().values()) == 10, 60)
            assert wait_until(lambda: collector.consumer.lag().get(1) == 0, 20)
        finally:
            collector.stop()
            runner.join(30)
    dead = registry.get_sample_value(
        "gpu_telemetry_collector_dead_lettered_total", {"reason": "decode"}
    )
    assert dead == 7
    c = consumer(kafka.transport, group(), f"{topic}.dlq")
    try:
        (letter,) = drain(c, 1)
    finally:
        c.close()
    header, payload = unwrap(letter.payload)
    assert payload == b"\xff\x00 not a batch"
    assert (header["topic"], header["partition"], header["count"], header["reason"]) == (
        topic,
        1,
        7,
        "decode",
    )


class _StuckOffsets:
    """A real producer whose `send_offsets_to_transaction` ignores its timeout and waits, as
    librdkafka 2.16's can after the group coordinator's broker left the cluster."""

    def __init__(self, real: object) -> None:
        self._real = real
        self.entered = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)

    def send_offsets_to_transaction(self, *args: object) -> None:
        self.entered.set()
        self.release.wait(60)


def test_a_transactional_call_stuck_past_its_timeout_is_reported_not_waited_on(kafka1):
    """The `producer-watchdog` hands the stuck call to `on_wedged` (the streamer exits, so a
    restart takes over); a commit that returns in time never does."""
    from gputel.transport.kafka_stream import KafkaStreamProducer

    topic = Backend("kafka", Transport.of(kafka1.url)).topic(1)
    wedged: list[str] = []
    producer = KafkaStreamProducer(
        kafka1.bootstrap, topic, group(), {}, lambda *_: None,
        on_wedged=wedged.append, wedged_grace_s=1.0,
    ).start(60)  # fmt: skip
    producer.track(0, "g", 0, 0)
    producer.send_batch(0, b"committed in time", 10)
    producer.flush(30)
    time.sleep(2.5)  # longer than a timeout of 1 s plus the grace: nothing was stuck
    assert wedged == []

    stuck = _StuckOffsets(producer._producer)  # type: ignore[attr-defined]
    producer._producer = stuck  # type: ignore[attr-defined,assignment]
    producer.send_batch(0, b"its commit hangs" * 4, 10)
    flushing = threading.Thread(target=producer.flush, args=(1.0,), daemon=True)
    started = time.monotonic()
    flushing.start()
    assert stuck.entered.wait(10)
    assert wait_until(lambda: wedged, 10), "the stuck call was never reported"
    took = time.monotonic() - started
    assert 2.0 <= took <= 5.0, f"reported after {took:.1f} s (timeout 1 s + grace 1 s)"
    assert "send_offsets_to_transaction" in wedged[0] and "1 s timeout" in wedged[0]
    stuck.release.set()
    flushing.join(10)
    producer._producer = stuck._real  # type: ignore[attr-defined]
    producer.close(10)


def test_the_collector_is_not_ready_while_the_cluster_lacks_its_topic(kafka1, tmp_path):
    """As on walbroker (tests/collector/test_process.py): a collector whose topic does not
    exist consumes nothing, so /readyz says not ready, with topic_missing, until it exists."""
    from prometheus_client import CollectorRegistry

    from collector.config import CollectorConfig
    from collector.metrics import CollectorMetrics
    from collector.runner import Collector
    from store import open_store

    topic = f"created-late-{group()}"
    db = f"sqlite:{tmp_path / 'store.db'}"
    config = CollectorConfig(
        broker=kafka1.url, store=db, topic=topic, group=group(), flush_ms=100, metrics_listen=""
    )
    with open_store(db) as store:
        collector = Collector(config, store, CollectorMetrics(CollectorRegistry()))
        runner = threading.Thread(target=collector.run)
        runner.start()
        try:
            assert wait_until(lambda: collector.readiness()[1]["topic_missing"], 30), (
                collector.readiness()
            )
            ready, detail = collector.readiness()
            assert not ready and detail["store_up"] and not detail["assigned"], detail
            create_kafka_topic(kafka1.bootstrap, topic, 2)
            assert wait_until(lambda: collector.readiness()[0], 60), collector.readiness()
            assert collector.readiness()[1]["topic_missing"] is False
        finally:
            collector.stop()
            runner.join(30)
        assert not runner.is_alive()

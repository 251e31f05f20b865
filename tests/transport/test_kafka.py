"""What only Kafka has to prove: the streamer's fencing, and lag across transaction markers."""

from __future__ import annotations

import pytest

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
    create_kafka_topic(kafka1.bootstrap, late, 1)
    factory.record_producer(kafka.transport, late).close(5)

"""The test Kafka clusters: what goes in comes out, and kill -9 of a broker loses nothing.

These prove the fixtures (tests/kafka_cluster.py) before any gputel code runs on them.
"""

from __future__ import annotations

import threading
import time
import uuid

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicCollection
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from tests.kafka_cluster import KafkaCluster


def _create_topic(cluster: KafkaCluster, partitions: int) -> str:
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    rf = cluster.nodes
    # The client must outlive its futures: a collected AdminClient cancels them.
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=rf)], operation_timeout=30
    )
    for f in futures.values():
        f.result(timeout=60)
    return name


def _min_isr_size(cluster: KafkaCluster, topic: str) -> int:
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    desc = admin.describe_topics(TopicCollection([topic]))[topic].result(timeout=30)
    return min(len(p.isr) for p in desc.partitions)


def _producer(cluster: KafkaCluster) -> Producer:
    return Producer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            # A failover takes a few seconds: let librdkafka retry through it, never give up early.
            "message.timeout.ms": 120_000,
        }
    )


class Acks:
    """The values the cluster acknowledged, counted from delivery reports."""

    def __init__(self) -> None:
        self.acked: list[bytes] = []
        self.failed: list[str] = []

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.acked.append(msg.value() or b"")
        else:
            self.failed.append(str(err))


def _consume_all(cluster: KafkaCluster, topic: str, expected: int, timeout_s: float) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "group.id": f"smoke-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        # Read past `expected` for a moment: a duplicate would show up as an extra message.
        while time.monotonic() < deadline and len(got) < expected:
            for msg in consumer.consume(1000, timeout=1.0):
                assert msg.error() is None, msg.error()
                got.append(msg.value() or b"")
        for msg in consumer.consume(1000, timeout=2.0):
            got.append(msg.value() or b"")
    finally:
        consumer.close()
    return got


def test_one_node_returns_every_message_produced(kafka1: KafkaCluster) -> None:
    topic = _create_topic(kafka1, partitions=4)
    producer, acks = _producer(kafka1), Acks()
    for i in range(5000):
        producer.produce(topic, key=f"gpu-{i % 64}", value=str(i).encode(), on_delivery=acks)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert acks.failed == [] and len(acks.acked) == 5000

    got = _consume_all(kafka1, topic, 5000, timeout_s=60)
    assert sorted(got) == sorted(acks.acked)


def test_three_nodes_lose_nothing_acknowledged_when_a_broker_is_killed(
    kafka3: KafkaCluster,
) -> None:
    topic = _create_topic(kafka3, partitions=6)
    producer, acks = _producer(kafka3), Acks()
    total, kill_at = 30_000, 10_000
    killed = threading.Event()
    try:
        for i in range(total):
            if i == kill_at:
                # Messages are in flight now (none flushed): node 2 leads some partitions (RF=3).
                kafka3.kill_node(2)
                killed.set()
            producer.produce(topic, key=f"gpu-{i % 64}", value=str(i).encode(), on_delivery=acks)
            producer.poll(0)
        assert producer.flush(120) == 0
    finally:
        if killed.is_set():
            kafka3.restart_node(2)
    # With two of three replicas in sync, acks=all writes went on while node 2 was down.
    assert acks.failed == []
    assert len(acks.acked) == total

    deadline = time.monotonic() + 60
    while _min_isr_size(kafka3, topic) < 3:
        assert time.monotonic() < deadline, "the restarted broker did not rejoin the ISR"
        time.sleep(0.5)

    got = _consume_all(kafka3, topic, total, timeout_s=120)
    # Nothing acknowledged is lost, and the idempotent producer's retries wrote nothing twice.
    assert len(got) == len(set(got)) == total
    assert set(got) == set(acks.acked)

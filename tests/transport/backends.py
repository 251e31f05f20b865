"""The two transports as test backends: a real walbroker process, a real Kafka cluster.

`Backend` hides only what differs in setting up (making a topic); everything a test then
does goes through `gputel.transport.factory`, as the streamer and the collector do.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka.admin import AdminClient, NewTopic

from gputel.transport import factory
from gputel.transport.base import GroupConsumer, Record
from gputel.transport.factory import Transport
from tests.support import wait_until


@dataclass
class Backend:
    """A running broker of one kind and a way to make topics on it."""

    kind: str
    transport: Transport

    def topic(self, partitions: int = 4) -> str:
        """A new, empty topic with `partitions` partitions."""
        name = f"t-{uuid.uuid4().hex[:10]}"
        if self.transport.url.is_kafka:
            create_kafka_topic(self.transport.url.bootstrap, name, partitions)
        # walbroker: the test broker creates topics on first use (--auto-create-topics)
        return name


def create_kafka_topic(bootstrap: str, name: str, partitions: int, replicas: int = 1) -> None:
    """Create a topic and wait until its metadata is visible."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, replicas)])[name].result(30)
    assert wait_until(lambda: name in admin.list_topics(timeout=5).topics, 30)


def group() -> str:
    """A new group name."""
    return f"g-{uuid.uuid4().hex[:10]}"


class Link:
    """A streamer's producer and membership, started, owning what the group gave it."""

    def __init__(self, t: Transport, group_name: str, topic: str) -> None:
        self.acked: list[tuple[int, int]] = []
        self.revoked: set[int] = set()
        self.producer, self.member = factory.stream_link(
            t, group_name, topic,
            on_ack=lambda p, n, _t: self.acked.append((p, n)),
            on_backpressure=lambda _e: None,
            on_revoke=self.revoked.update, on_assignment=lambda _a: None,
            session_timeout_ms=6000,
        )  # fmt: skip
        self.group = group_name

    def start(self) -> Link:
        self.member.start()
        self.producer.start(timeout_s=60)
        assert wait_until(lambda: self.member.assignment is not None, 30)
        a = self.member.assignment
        assert a is not None
        for p, progress in a.positions.items():
            self.producer.track(p, self.group, a.epochs.get(p, 0), progress)
        return self

    @property
    def positions(self) -> dict[int, int]:
        a = self.member.assignment
        assert a is not None
        return dict(a.positions)

    def close(self) -> None:
        self.member.close()
        self.producer.close(timeout_s=10)


def consumer(t: Transport, group_name: str, topic: str, **kwargs: object) -> GroupConsumer:
    """A started group consumer."""
    c = factory.group_consumer(t, group_name, topic, session_timeout_ms=6000, **kwargs)  # type: ignore[arg-type]
    c.start()
    return c


def drain(c: GroupConsumer, points: int, timeout_s: float = 60) -> list[Record]:
    """Poll until `points` points arrived (or fail)."""
    got: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while sum(r.count - r.skip for r in got) < points:
        assert time.monotonic() < deadline, f"{sum(r.count for r in got)} of {points} points"
        got += c.poll(0.2, 100)
    return got


def quiet(c: GroupConsumer, for_s: float = 2.0) -> list[Record]:
    """What arrives within `for_s` (expected: nothing)."""
    got: list[Record] = []
    deadline = time.monotonic() + for_s
    while time.monotonic() < deadline:
        got += c.poll(0.2, 100)
    return got

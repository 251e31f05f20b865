"""Clients for a `--broker` URL: walbroker's or Kafka's, behind the protocols of `base`.

The only module that decides which transport a process uses; the Kafka modules are imported
here lazily, so a walbroker-only run never loads librdkafka.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gputel.transport.base import (
    AckCallback,
    Assignment,
    GroupConsumer,
    RecordProducer,
    StreamMember,
    StreamProducer,
)
from gputel.transport.url import BrokerUrl, parse_broker
from walbroker.credentials import ClientSecurity


@dataclass(frozen=True, slots=True)
class Transport:
    """Where a component's broker is and how to reach it (built by its config.py)."""

    url: BrokerUrl
    security: ClientSecurity = field(default_factory=ClientSecurity)
    # librdkafka properties from --kafka-config (secrets already read from their files)
    kafka_properties: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, broker: str, security: ClientSecurity | None = None) -> Transport:
        """A transport from a `--broker` value (ValueError when malformed)."""
        return cls(parse_broker(broker), security or ClientSecurity())


def kafka_properties(path: str) -> dict[str, str]:
    """librdkafka properties from a `--kafka-config` file ({} without one; KafkaConfigError).

    Secret references (`${file:…}`, `${env:…}`) are resolved now (`kafka_config`), so the
    values live only in this process's memory, never on its command line or in a log.
    """
    if not path:
        return {}
    from gputel.transport.kafka_config import load_properties

    return load_properties(path)


def group_consumer(
    t: Transport,
    group: str,
    topic: str,
    *,
    client_id: str = "",
    max_unacked_points: int = 100_000,
    session_timeout_ms: int = 10_000,
    on_revoke: Callable[[set[int]], None] | None = None,
) -> GroupConsumer:
    """A consumer-group member (the collector's)."""
    if t.url.is_kafka:
        from gputel.transport.kafka_consumer import KafkaGroupConsumer

        return KafkaGroupConsumer(
            t.url.bootstrap, group, topic, t.kafka_properties,
            client_id=client_id or "gputel-collector", max_unacked_points=max_unacked_points,
            session_timeout_ms=session_timeout_ms, on_revoke=on_revoke,
        )  # fmt: skip
    from gputel.transport.wal import WalConsumer

    return WalConsumer(
        t.url.target, group, topic, client_id=client_id, max_unacked_points=max_unacked_points,
        session_timeout_ms=session_timeout_ms, on_revoke=on_revoke, security=t.security,
    )  # fmt: skip


def record_producer(t: Transport, topic: str, producer_id: str = "") -> RecordProducer:
    """A single-record producer (dead letters), started."""
    if t.url.is_kafka:
        from gputel.transport.kafka_producer import KafkaRecordProducer

        return KafkaRecordProducer(t.url.bootstrap, topic, t.kafka_properties)
    from gputel.transport.wal import WalRecordProducer

    return WalRecordProducer(t.url.target, topic, producer_id, t.security)


def stream_link(
    t: Transport,
    group: str,
    topic: str,
    *,
    on_ack: AckCallback,
    on_backpressure: Callable[[Exception], None],
    on_revoke: Callable[[set[int]], None],
    on_assignment: Callable[[Assignment], None],
    batch_size: int = 1000,
    linger_ms: int = 20,
    max_pending_points: int = 200_000,
    session_timeout_ms: int = 10_000,
) -> tuple[StreamProducer, StreamMember]:
    """The streamer's producer and its membership (not started)."""
    if t.url.is_kafka:
        from gputel.transport.kafka_stream import KafkaStreamMember, KafkaStreamProducer

        producer = KafkaStreamProducer(
            t.url.bootstrap, topic, group, t.kafka_properties, on_ack,
            max_pending_points=max_pending_points,
        )  # fmt: skip
        return producer, KafkaStreamMember(producer)
    from gputel.transport.wal import WalStreamMember, stream_producer

    wal = stream_producer(
        t.url.target, topic, on_ack, batch_size=batch_size, linger_ms=linger_ms,
        max_pending_points=max_pending_points, on_backpressure=on_backpressure,
        security=t.security,
    )  # fmt: skip
    member = WalStreamMember(
        t.url.target, group, topic, session_timeout_ms=session_timeout_ms,
        on_revoke=on_revoke, on_assignment=on_assignment, security=t.security,
    )  # fmt: skip
    return wal, member

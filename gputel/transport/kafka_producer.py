"""Single records to Kafka (the collector's dead letters): idempotent, acks=all, keyed partitions.

The partition of a key is gputel's (`walbroker.types.partition_for_key`, CRC-32 of the UTF-8
key modulo the topic's partition count), given explicitly with every record: librdkafka's
partitioner is never used, so both transports place a key alike.

A record whose delivery fails for good (librdkafka gave up after `message.timeout.ms`) is kept
and produced again by the next `flush`, which raises the failure first: the caller (the
collector, before a commit) retries the flush, so a dead letter is never lost silently.

Thread-safety: `send_record`, `flush` and `close` may be called from any thread (librdkafka's
producer is thread-safe); `_lock` guards the failed records and the failure.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from confluent_kafka import KafkaError, Message, Producer

from gputel.transport.kafka_common import COUNT_HEADER, PRODUCER, client_config, list_topic
from gputel.transport.kafka_errors import from_kafka
from walbroker.errors import BrokerError
from walbroker.types import partition_for_key

log = logging.getLogger(__name__)

_Failed = tuple[int, bytes, int]  # partition, payload, count


class KafkaRecordProducer:
    """Publishes records of one topic to the partitions their keys map to."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        properties: Mapping[str, str],
        client_id: str = "gputel",
        timeout_s: float = 30.0,
    ) -> None:
        self.topic = topic
        conf = client_config(bootstrap, properties, {**PRODUCER, "client.id": client_id})
        self._producer = Producer(conf)
        self.partitions = list_topic(self._producer, topic, bootstrap, timeout_s)
        self._lock = threading.Lock()
        self._failed: list[_Failed] = []
        self._failure: BrokerError | None = None

    def send_record(self, key: str, payload: bytes, count: int) -> None:
        """Queue one record on the key's partition; `flush` waits until Kafka stored it."""
        self._produce(partition_for_key(key, self.partitions), payload, count)

    def _produce(self, partition: int, payload: bytes, count: int) -> None:
        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                with self._lock:
                    self._failed.append((partition, payload, count))
                    self._failure = from_kafka(err)

        while True:
            try:
                self._producer.produce(
                    self.topic, payload, partition=partition,
                    headers={COUNT_HEADER: str(count)}, on_delivery=delivered,
                )  # fmt: skip
                break
            except BufferError:  # librdkafka's queue is full: let deliveries drain it
                self._producer.poll(0.1)
        self._producer.poll(0)

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every record is stored (TimeoutError); raise a delivery failure once."""
        with self._lock:
            retry, self._failed = self._failed, []
            failure, self._failure = self._failure, None
        for partition, payload, count in retry:
            self._produce(partition, payload, count)
        if failure is not None:
            log.warning("records will be produced again", extra={"reason": failure.message})
            raise failure
        left = self._producer.flush(-1 if timeout_s is None else timeout_s)
        if left:
            raise TimeoutError(f"{left} records to {self.topic} not acknowledged")
        with self._lock:
            failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush what is queued (up to `timeout_s`)."""
        self.flush(timeout_s)

"""What every Kafka client of gputel shares: its librdkafka configuration and topic metadata.

`client_config` starts from the operator's properties (`--kafka-config`: security protocol,
SASL, TLS, tuning) and adds the settings gputel's guarantees rest on. Those are not the
operator's to change, so a file that sets one of them differently is refused with the reason
rather than silently overridden: `enable.idempotence` and `acks` (no batch lost or written
twice by a retry), `enable.auto.commit` (the collector commits only what it persisted),
`isolation.level` (consumers never see batches of an aborted streamer transaction) and
`partition.assignment.strategy` (cooperative rebalancing: a member keeps its other
partitions while one moves).

librdkafka's own log lines go to the `gputel.transport.librdkafka` logger (structured like
every other line), not to stderr.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin._metadata import ClusterMetadata

from gputel.transport.kafka_errors import from_kafka
from walbroker.errors import NotFound

LIBRDKAFKA_LOG = logging.getLogger("gputel.transport.librdkafka")

PRODUCER = {"enable.idempotence": "true", "acks": "all"}
CONSUMER = {
    "enable.auto.commit": "false",
    "enable.auto.offset.store": "false",
    "isolation.level": "read_committed",
    "partition.assignment.strategy": "cooperative-sticky",
    "auto.offset.reset": "earliest",
}
# The value gputel sets is a guarantee: a --kafka-config file may not change these.
LOCKED = frozenset({*PRODUCER, *CONSUMER})
FROM_FLAGS = frozenset({"bootstrap.servers", "group.id", "transactional.id"})
# One published record: gputel's batches are far below this; it bounds a hostile one.
MAX_RECORD_BYTES = 8 * 1024 * 1024
COUNT_HEADER = "gputel-count"  # points in the record (a Kafka offset counts records)


def client_config(
    bootstrap: str, properties: Mapping[str, str], ours: Mapping[str, object]
) -> dict[str, Any]:
    """librdkafka settings: the operator's `properties`, then gputel's `ours` (locked keys)."""
    for key, value in properties.items():
        if key in FROM_FLAGS:
            raise ValueError(f"--kafka-config may not set {key}: it comes from the flags")
        if key in LOCKED and key in ours and str(ours[key]) != str(value):
            raise ValueError(
                f"--kafka-config sets {key}={value}, but gputel needs {key}={ours[key]}: "
                "remove it from the file"
            )
    return {**properties, **ours, "bootstrap.servers": bootstrap, "logger": LIBRDKAFKA_LOG}


def partition_count(metadata: ClusterMetadata, topic: str, bootstrap: str) -> int:
    """Partitions of `topic` in `metadata`; NotFound naming what to do when it does not exist."""
    info = metadata.topics.get(topic)
    if info is None or (info.error is not None and not info.partitions):
        raise NotFound(
            f"topic {topic!r} does not exist on the Kafka cluster at {bootstrap}: create it "
            "(gputel admin, or a KafkaTopic with Strimzi) with the partitions you need"
        )
    return len(info.partitions)


def list_topic(client: Any, topic: str, bootstrap: str, timeout_s: float) -> int:
    """Ask the cluster for `topic`'s partition count (BrokerError when it cannot answer)."""
    try:
        md = client.list_topics(topic=topic, timeout=timeout_s)
    except KafkaException as exc:
        raise from_kafka(exc) from None
    return partition_count(md, topic, bootstrap)

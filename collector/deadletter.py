"""The dead-letter topic: records the collector cannot store, kept byte for byte.

A dead letter is one record on `<topic>.dlq` (keyed by the source partition, counted as one
point), on whichever transport the collector uses, its payload an envelope around the
original bytes:

    b"GTDL" | version (1 byte, = 1) | header length (4 bytes, big-endian) | header | payload

The header is UTF-8 JSON: `topic`, `partition`, `base_offset`, `count`, `skip`,
`publish_time_ns` of the source record (offsets in the transport's unit: points on
walbroker, records on Kafka), and `reason` (`decode` or `invalid`) with `error`.
`payload` is the source record's payload, unchanged. `unwrap` reads an envelope back.

Thread-safe: the collector loop sends records that do not decode, its writer thread those
the store rejects and flushes before each commit.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Callable
from typing import Any

from gputel.transport.base import Record, RecordProducer

MAGIC = b"GTDL"
VERSION = 1
_PREFIX = struct.Struct(">4sBI")


def wrap(msg: Record, reason: str, error: str) -> bytes:
    """Return the envelope of a source record that goes to the dead-letter topic."""
    header = {
        "topic": msg.topic,
        "partition": msg.partition,
        "base_offset": msg.base_offset,
        "count": msg.count,
        "skip": msg.skip,
        "publish_time_ns": msg.publish_time_ns,
        "reason": reason,
        "error": error,
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return _PREFIX.pack(MAGIC, VERSION, len(head)) + head + msg.payload


def unwrap(data: bytes) -> tuple[dict[str, Any], bytes]:
    """Return (header, original payload) of an envelope; ValueError when it is not one."""
    if len(data) < _PREFIX.size:
        raise ValueError("not a dead-letter envelope: too short")
    magic, version, size = _PREFIX.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"not a dead-letter envelope: {magic!r} v{version}")
    start = _PREFIX.size
    header: dict[str, Any] = json.loads(data[start : start + size])
    return header, data[start + size :]


class DeadLetters:
    """Publishes envelopes to the dead-letter topic with an idempotent producer (made lazily)."""

    def __init__(self, make: Callable[[], RecordProducer], topic: str) -> None:
        self.topic = topic
        self._make = make
        self._producer: RecordProducer | None = None
        self._lock = threading.Lock()  # guards making and closing the producer, not its use

    def _get(self, create: bool) -> RecordProducer | None:
        with self._lock:
            if self._producer is None and create:
                self._producer = self._make()
            return self._producer

    def send(self, msg: Record, reason: str, error: str) -> None:
        """Queue the envelope of `msg`; `flush` makes sure the broker stored it."""
        producer = self._get(create=True)
        assert producer is not None
        producer.send_record(str(msg.partition), wrap(msg, reason, error), 1)

    def flush(self, timeout_s: float) -> None:
        """Wait until every envelope sent is acknowledged (TimeoutError, BrokerError)."""
        producer = self._get(create=False)
        if producer is not None:
            producer.flush(timeout_s)

    def close(self) -> None:
        """Flush briefly and stop the producer."""
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout_s=5.0)

"""Small frozen value types shared by the log, the coordinator, the server and the client."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

# Re-exported: the log, the coordinator and admin check names through the value types' module.
from walbroker.validation import validate_name as validate_name


def partition_for_key(key: str, partitions: int) -> int:
    """The partition of `key`: CRC-32 (zlib) of its UTF-8 bytes modulo the partition count."""
    return zlib.crc32(key.encode("utf-8")) % partitions


@dataclass(frozen=True, slots=True)
class TopicPartition:
    """A partition of a topic."""

    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class Record:
    """One stored batch: `count` points at offsets [base_offset, base_offset + count)."""

    base_offset: int
    count: int
    publish_time_ns: int
    payload: bytes

    @property
    def next_offset(self) -> int:
        """The offset after this record's last point."""
        return self.base_offset + self.count


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an appended (or deduplicated) batch landed."""

    tp: TopicPartition
    base_offset: int
    count: int
    publish_time_ns: int
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """A partition's extent: log start and end offsets, bytes, and the publish times at each end."""

    tp: TopicPartition
    log_start_offset: int
    log_end_offset: int
    size_bytes: int
    first_publish_ns: int
    last_publish_ns: int

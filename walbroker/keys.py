"""Key and value encodings of the LMDB sub-databases (the layout is documented in `walbroker.log`).

Integers in keys are big-endian so LMDB's byte order is numeric order. Names
never contain NUL (`types.validate_name`), so NUL separates them.
"""

from __future__ import annotations

import struct

from walbroker.types import TopicPartition

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_REC_HEAD = struct.Struct(">qI")  # publish_time_ns, count
_PART = struct.Struct(">QQQqq")  # log_start, log_end, size_bytes, first_publish_ns, last_publish_ns
_TOPIC = struct.Struct(">Iq")  # partitions, created_ns
_OFFSET = struct.Struct(">Qq")  # committed offset, commit time ns
_PRODUCER_HEAD = struct.Struct(">Q")  # last sequence
_PRODUCER_ENTRY = struct.Struct(">QQIq")  # sequence, base_offset, count, publish_time_ns

RECORD_HEADER_SIZE = _REC_HEAD.size
PRODUCER_WINDOW = 5  # recent batches remembered per producer and partition, as Kafka does


def partition_prefix(tp: TopicPartition) -> bytes:
    """The key prefix shared by every entry of one partition."""
    return tp.topic.encode() + b"\x00" + _U32.pack(tp.partition)


def record_key(tp: TopicPartition, base_offset: int) -> bytes:
    """Key of the record starting at `base_offset`."""
    return partition_prefix(tp) + _U64.pack(base_offset)


def offset_of_key(key: bytes) -> int:
    """The base offset (records) or the publish time (time index) at the end of a key."""
    return int(_U64.unpack_from(key, len(key) - 8)[0])


def time_key(tp: TopicPartition, publish_time_ns: int) -> bytes:
    """Time-index key: partition prefix + publish time."""
    return partition_prefix(tp) + _U64.pack(max(publish_time_ns, 0))


def pack_u64(value: int) -> bytes:
    """An unsigned 64-bit big-endian integer."""
    return _U64.pack(value)


def unpack_u64(data: bytes) -> int:
    """Inverse of `pack_u64`."""
    return int(_U64.unpack(data)[0])


def pack_record(publish_time_ns: int, count: int, payload: bytes) -> bytes:
    """A record value: header then the opaque payload."""
    return _REC_HEAD.pack(publish_time_ns, count) + payload


def unpack_record_head(value: bytes | memoryview) -> tuple[int, int]:
    """(publish_time_ns, count) of a record value."""
    t, n = _REC_HEAD.unpack_from(value, 0)
    return int(t), int(n)


def pack_partition(start: int, end: int, size: int, first_ns: int, last_ns: int) -> bytes:
    """A partition's durable extent."""
    return _PART.pack(start, end, size, first_ns, last_ns)


def unpack_partition(value: bytes) -> tuple[int, int, int, int, int]:
    """Inverse of `pack_partition`."""
    a, b, c, d, e = _PART.unpack(value)
    return int(a), int(b), int(c), int(d), int(e)


def pack_topic(partitions: int, created_ns: int) -> bytes:
    """A topic's configuration."""
    return _TOPIC.pack(partitions, created_ns)


def unpack_topic(value: bytes) -> tuple[int, int]:
    """Inverse of `pack_topic`."""
    p, c = _TOPIC.unpack(value)
    return int(p), int(c)


def group_key(group: str, tp: TopicPartition) -> bytes:
    """Committed-offset key of a group on a partition."""
    return group.encode() + b"\x00" + partition_prefix(tp)


def split_group_key(key: bytes) -> tuple[str, TopicPartition]:
    """Inverse of `group_key`."""
    group, rest = key.split(b"\x00", 1)
    topic, part = rest[:-5], rest[-4:]
    return group.decode(), TopicPartition(topic.decode(), _U32.unpack(part)[0])


def pack_offset(offset: int, time_ns: int) -> bytes:
    """A committed offset and when it was committed."""
    return _OFFSET.pack(offset, time_ns)


def unpack_offset(value: bytes) -> tuple[int, int]:
    """Inverse of `pack_offset`."""
    o, t = _OFFSET.unpack(value)
    return int(o), int(t)


def producer_key(producer_id: str, tp: TopicPartition) -> bytes:
    """Idempotence state key of a producer on a partition."""
    return producer_id.encode() + b"\x00" + partition_prefix(tp)


def pack_producer(last_seq: int, window: list[tuple[int, int, int, int]]) -> bytes:
    """Last sequence and the most recent (sequence, base, count, time) entries."""
    return _PRODUCER_HEAD.pack(last_seq) + b"".join(_PRODUCER_ENTRY.pack(*e) for e in window)


def unpack_producer(value: bytes) -> tuple[int, list[tuple[int, int, int, int]]]:
    """Inverse of `pack_producer`."""
    (last,) = _PRODUCER_HEAD.unpack_from(value, 0)
    entries = [
        tuple(int(x) for x in _PRODUCER_ENTRY.unpack_from(value, off))
        for off in range(_PRODUCER_HEAD.size, len(value), _PRODUCER_ENTRY.size)
    ]
    return int(last), entries  # type: ignore[return-value]

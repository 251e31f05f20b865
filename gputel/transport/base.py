"""The transport boundary: what the streamer and the collector need from a message broker.

Two implementations sit behind it: walbroker (`gputel.transport.wal`, today's gRPC client,
unchanged) and Apache Kafka (`gputel.transport.kafka_*`, confluent-kafka). `factory` picks one
from the `--broker` URL. Callers see these protocols, `walbroker.errors`' error tree (the Kafka
adapter translates its errors into it, in `kafka_errors`) and nothing of either client.

Vocabulary is Kafka's on both: topic, partition, offset ("the next one"), committed offset,
lag. One difference is visible and named: a walbroker offset counts points, a Kafka offset
counts records (one published batch each). `Record.next_offset` hides it from the collector,
which only ever commits the offset after the last record it stored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from walbroker.consumer import Assignment

__all__ = [
    "AckCallback",
    "Assignment",
    "GroupConsumer",
    "Record",
    "RecordProducer",
    "StreamMember",
    "StreamProducer",
]

# Called once per acknowledged batch: (partition, points, monotonic time it was handed over).
AckCallback = Callable[[int, int, float], None]


class Record(Protocol):
    """One delivered record: a batch of `count` points (the first `skip` already consumed)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def base_offset(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def skip(self) -> int: ...
    @property
    def publish_time_ns(self) -> int: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def next_offset(self) -> int:
        """The offset to commit once this record is stored."""
        ...


class GroupConsumer(Protocol):
    """A member of a consumer group: poll records, commit after persisting, release on revoke.

    `on_revoke` (given to the factory) is told which partitions leave; the application drops
    what it holds of them and calls `release`. Commits of partitions no longer owned are
    filtered by the caller through `positions()`.
    """

    @property
    def assignment(self) -> Assignment | None: ...
    @property
    def last_error(self) -> Exception | None: ...

    def start(self) -> object: ...
    def poll(self, timeout_s: float = 1.0, max_messages: int = 1000) -> Sequence[Record]: ...
    def commit(
        self, offsets: dict[int, int] | None = None, timeout_s: float = 10.0, wait: bool = True
    ) -> bool: ...
    def positions(self) -> dict[int, int]: ...
    def release(self, partitions: set[int]) -> None: ...
    def lag(self) -> dict[int, int]:
        """Consumer lag per owned partition, in the transport's offset unit ({} if unknown)."""
        ...

    def close(self) -> None: ...


class RecordProducer(Protocol):
    """Publishes single records (dead letters), keyed to a partition, idempotently."""

    def send_record(self, key: str, payload: bytes, count: int) -> None: ...
    def flush(self, timeout_s: float | None = None) -> None: ...
    def close(self, timeout_s: float = 30.0) -> None: ...


class StreamProducer(Protocol):
    """The streamer's producer: encoded batches to explicit partitions, fenced per partition.

    `track(p, group, epoch, progress)` ties the partition's next batches to the group's
    progress (rows): the transport stores that progress atomically with the batches, so a
    new owner resumes exactly where the log ends.
    """

    @property
    def partitions(self) -> int: ...
    @property
    def pending_points(self) -> int: ...
    @property
    def max_batch_bytes(self) -> int:
        """The largest encoded batch `send_batch` takes (a larger one fails the producer)."""
        ...

    def start(self, timeout_s: float = 30.0) -> object: ...
    def send_batch(
        self, partition: int, payload: bytes, count: int, timeout_s: float | None = None
    ) -> None: ...
    def flush(self, timeout_s: float | None = None) -> None: ...
    def close(self, timeout_s: float = 30.0) -> None: ...
    def track(self, partition: int, group: str, epoch: int, progress: int) -> None: ...
    def untrack(self, partition: int) -> None: ...


class StreamMember(Protocol):
    """The streamer's membership: which partitions it owns and from which progress."""

    @property
    def assignment(self) -> Assignment | None: ...
    @property
    def failure(self) -> Exception | None: ...

    def start(self) -> object: ...
    def close(self) -> None: ...
    def commit(self, offsets: dict[int, int] | None = None, timeout_s: float = 10.0) -> bool: ...
    def release(self, partitions: set[int]) -> None: ...
    def progress(self) -> dict[int, int]:
        """The group's committed progress (rows) of every partition of the topic."""
        ...

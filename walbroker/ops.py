"""The operations the log's writer applies, one group commit at a time (`walbroker.writer`).

Each carries the future its submitter waits on; the writer resolves it once the
transaction that applied the operation is committed (or fails it alone).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from walbroker.errors import BrokerError
from walbroker.types import AppendResult, TopicPartition


@dataclass(frozen=True, slots=True)
class Fence:
    """A producer-group claim: the grant epoch, and the progress to store with the batch."""

    group: str
    epoch: int
    progress: int


@dataclass(slots=True)
class AppendOp:
    """Append one batch (deduplicated by producer id and sequence; fenced when `fence` is set)."""

    tp: TopicPartition
    payload: bytes
    count: int
    producer_id: str
    sequence: int
    future: Future[AppendResult]
    fence: Fence | None = None


@dataclass(slots=True)
class CommitOffsetsOp:
    """Store a group's committed offsets."""

    group: str
    topic: str
    offsets: dict[int, int]
    future: Future[None]


@dataclass(slots=True)
class CreateTopicOp:
    """Create a topic with a fixed partition count."""

    topic: str
    partitions: int
    future: Future[int]


@dataclass(slots=True)
class DeleteTopicOp:
    """Delete a topic and everything stored under it."""

    topic: str
    future: Future[None]


@dataclass(slots=True)
class DeleteGroupOp:
    """Delete every committed offset of a group."""

    group: str
    future: Future[None]


@dataclass(slots=True)
class SettleLegacyOp:
    """Settle a group an older broker left ambiguous, now that a member told its role."""

    group: str
    role: str
    future: Future[None]


@dataclass(slots=True)
class RetentionOp:
    """Delete records older than the retention age (as of `now_ns`; None: the wall clock
    when the writer gets to it)."""

    future: Future[None]
    now_ns: int | None = None


@dataclass(slots=True)
class BarrierOp:
    """Resolves once every operation queued before it is committed and visible in memory."""

    future: Future[None]


Op = (
    AppendOp
    | CommitOffsetsOp
    | CreateTopicOp
    | DeleteTopicOp
    | DeleteGroupOp
    | SettleLegacyOp
    | RetentionOp
    | BarrierOp
)
Outcome = tuple[Op, Any, BrokerError | None]  # an operation, its result, or its error

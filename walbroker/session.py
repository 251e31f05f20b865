"""One member's Consume stream: join, assignments, credit-based delivery and commits.

The session is transport-free: the gRPC servicer feeds it requests and sends what
its `responses()` iterator yields. Three kinds of thread touch it: the request
reader (`handle`), the response writer (`responses`), and whichever thread makes
the coordinator rebalance the group (another member's join or leave, the
group-reaper, an admin reset), which calls `_on_assignment` under the group's
lock. `lock` guards the positions, credit and generation they share;
`_queue_lock` guards `outbound`, the control messages (assignments, commit acks) not yet
sent, and their size.

Two bounds hold delivery back. Credit is the member's own window: the points it asked
for (`Join.credit_points`, then each `Credit`), never more than `max_unacked` at once.
`max_unacked` (`--max-unacked-points`) bounds what the member holds uncommitted: the
points delivered past each assigned partition's committed offset (the one it started
from, then each commit it made). At the bound delivery pauses until it commits, whatever
credit it sends; only a single record larger than the bound is delivered, alone, when
nothing else is uncommitted.

What waits in `outbound` is bounded (`max_queued_bytes`, `--max-consume-queue-bytes`):
a member that sends commits but does not read its stream would otherwise make the broker
hold every answer. Past the bound the stream ends with RESOURCE_EXHAUSTED naming it: what
is queued is dropped, the request stream is no longer read (gRPC flow control then holds
the client back) and the member, no longer heartbeating, leaves the group at its session
timeout. One commit names at most the topic's partitions, so neither a commit nor its
answer is larger than the group's assignment.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator

from proto.gen import walbroker_pb2 as pb
from walbroker.errors import BrokerError, InvalidArgument, NotFound, ResourceExhausted
from walbroker.group import GroupCoordinator, MemberAssignment, Role
from walbroker.log import Log
from walbroker.metrics import BrokerMetrics
from walbroker.status import status_of
from walbroker.types import TopicPartition
from walbroker.validation import (
    MAX_CLIENT_ID_BYTES,
    MAX_MEMBER_ID_BYTES,
    validate_identifier,
    validate_name,
)

log = logging.getLogger(__name__)

_ROLES: dict[int, Role] = {pb.CONSUMER: "consumer", pb.PRODUCER: "producer"}
# Upper bound of points in one Records message read in one go.
READ_CHUNK_POINTS = 20_000


class Session:
    """A group member's stream: delivery positions, credit and the outbound control queue."""

    def __init__(
        self,
        wal: Log,
        coordinator: GroupCoordinator,
        metrics: BrokerMetrics,
        session_timeout_ms: int,
        max_unacked_points: int,
        max_queued_bytes: int = 1024 * 1024,
    ) -> None:
        self.wal = wal
        self.coordinator = coordinator
        self.metrics = metrics
        self.default_timeout_ms = session_timeout_ms
        self.max_unacked = max_unacked_points
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.closed = threading.Event()
        self.failure: BrokerError | None = None
        self.max_queued_bytes = max_queued_bytes
        self._queue_lock = threading.Lock()
        self.outbound: deque[tuple[pb.ConsumeResponse, int]] = deque()
        self.queued_bytes = 0
        self.group = self.topic = self.member_id = ""
        self.role: Role = "consumer"
        self.generation = 0
        self.positions: dict[int, int] = {}
        # partition -> the offset its uncommitted points start at; their sum is `unacked`
        self.acked: dict[int, int] = {}
        self.unacked = 0
        self._paused = False
        self.credit = 0
        self._turn = 0

    # ---- requests (reader thread) ----------------------------------------------------------

    def join(self, req: pb.Join, host: str = "") -> None:
        """Handle the stream's first message; `host` is the client's address (admin shows it)."""
        role = _ROLES.get(req.role)
        if role is None:
            raise InvalidArgument("join.role must be CONSUMER or PRODUCER")
        if not req.topic:
            raise InvalidArgument("join.topic is required")
        validate_name("join.topic", req.topic)
        validate_name("join.group", req.group)
        validate_identifier("join.client_id", req.client_id, MAX_CLIENT_ID_BYTES)
        validate_identifier("join.member_id", req.member_id, MAX_MEMBER_ID_BYTES)
        self.group, self.topic, self.role = req.group, req.topic, role
        self.credit = min(req.credit_points, self.max_unacked)
        if role == "consumer":  # a producer-group member gets no records: no wake per commit
            self.wal.subscribe(self.wake)
        self.member_id = self.coordinator.join(
            req.group,
            req.topic,
            role,
            client_id=req.client_id,
            member_id=req.member_id,
            session_timeout_ms=req.session_timeout_ms or self.default_timeout_ms,
            listener=self._on_assignment,
            host=host,
        )
        self.metrics.subscribers.labels(self.group, role).inc()

    def handle(self, req: pb.ConsumeRequest) -> None:
        """Handle one request after the join; raises BrokerError for a fatal one."""
        kind = req.WhichOneof("kind")
        if kind == "leave":
            self.close()
            return
        try:
            self.coordinator.heartbeat(self.group, self.member_id)
        except NotFound:
            self.fail(NotFound("member session expired; join again"))
            return
        if kind == "credit":
            with self.lock:
                self.credit = min(self.credit + req.credit.points, self.max_unacked)
        elif kind == "commit":
            self._commit(req.commit)
        elif kind == "release":
            self.coordinator.release(self.group, self.member_id, set(req.release.partitions))
        elif kind == "join":
            raise InvalidArgument("join may only be the first message of a stream")
        self.wake.set()

    def _commit(self, c: pb.Commit) -> None:
        ack = pb.CommitAck(commit_id=c.commit_id, generation=c.generation)
        error: BrokerError | None = None
        try:
            partitions = self.wal.partition_count(self.topic)
            if len(c.offsets) > partitions:  # refused whole, and not echoed
                self.metrics.commits.labels(self.group, "too_many_offsets").inc()
                raise InvalidArgument(
                    f"a commit names at most the topic's {partitions} partitions, "
                    f"not {len(c.offsets)}"
                )
            ack.offsets.extend(c.offsets)
            offsets = {o.partition: o.offset for o in c.offsets}
            self.coordinator.commit(self.group, self.member_id, c.generation, offsets)
            with self.lock:
                for p, offset in offsets.items():
                    if p in self.acked:
                        self.acked[p] = offset
                self._recount()
        except BrokerError as exc:
            error = exc
        ack.status.CopyFrom(status_of(error))
        self.push(pb.ConsumeResponse(commit_ack=ack))

    def _on_assignment(self, a: MemberAssignment) -> None:
        """Coordinator callback (under the group lock): new positions, then tell the member."""
        if self.role == "producer" and a.partitions - set(self.positions):
            # Progress is committed with each fenced batch: let every batch queued before
            # this grant land first, so the new owner resumes after the last one.
            self.wal.barrier()
        with self.lock:
            positions: dict[int, int] = {}
            restarted: set[int] = set()
            for p in sorted(a.partitions):
                if p in self.positions and p not in a.restarted:
                    positions[p] = self.positions[p]
                else:
                    positions[p] = self._start_position(TopicPartition(a.topic, p))
                    restarted.add(p)
            self.positions = positions
            self.acked = {
                p: self.acked.get(p, positions[p]) if p not in restarted else positions[p]
                for p in positions
            }
            self._recount()
            self.generation = a.generation
            committed = {p: self._committed(TopicPartition(a.topic, p)) for p in positions}
            msg = pb.Assignment(
                group=a.group,
                topic=a.topic,
                member_id=a.member_id,
                generation=a.generation,
                partition_count=a.partition_count,
                partitions=[
                    pb.AssignedPartition(
                        partition=p,
                        position=pos,
                        committed=committed[p] or 0,
                        restarted=p in restarted,
                        epoch=a.epochs.get(p, 0),
                    )
                    for p, pos in positions.items()
                ],
            )
        self.push(pb.ConsumeResponse(assignment=msg))

    def _recount(self) -> None:
        """Uncommitted points over the assigned partitions (caller holds `lock`)."""
        self.unacked = sum(max(0, pos - self.acked[p]) for p, pos in self.positions.items())

    def _start_position(self, tp: TopicPartition) -> int:
        """Where a (re)assigned partition starts: the committed offset clamped to the log.

        A producer group starts from its progress instead, a position in its source, not
        a log offset: it is used as it is (0 when none).
        """
        if self.role == "producer":
            return self._committed(tp) or 0
        info = self.wal.state(tp).info()
        committed = self.wal.offsets.committed(self.group, tp)
        if committed is None:
            return info.log_start_offset
        return min(max(committed, info.log_start_offset), info.log_end_offset)

    def _committed(self, tp: TopicPartition) -> int | None:
        """The consumer group's committed offset, or the producer group's progress."""
        if self.role == "producer":
            return self.wal.offsets.progress(self.group, tp)
        return self.wal.offsets.committed(self.group, tp)

    def push(self, msg: pb.ConsumeResponse) -> None:
        """Queue a control message for the member; past the bound, end the stream instead.

        One message larger than the bound is queued when nothing else waits (a large
        group's assignment), so the bound never refuses a member that reads.
        """
        size = msg.ByteSize()
        with self._queue_lock:
            if self.failure is not None:
                return  # ended: nothing more will be sent
            if self.outbound and self.queued_bytes + size > self.max_queued_bytes:
                queued = self.queued_bytes
                self._drop_queued()
                overflow = True
            else:
                self.outbound.append((msg, size))
                self.queued_bytes += size
                self.metrics.consume_queue_bytes.inc(size)
                overflow = False
        if overflow:
            self._overflow(queued + size)
        self.wake.set()

    def _overflow(self, size: int) -> None:
        self.metrics.refused.labels("max_consume_queue_bytes").inc()
        log.warning(
            "consume stream ended: its client does not read its answers",
            extra={
                "group": self.group,
                "member": self.member_id,
                "queued_bytes": size,
                "limit": self.max_queued_bytes,
            },
        )
        self.fail(
            ResourceExhausted(
                f"consume stream ended: {size} bytes of answers (assignments, commit acks) "
                f"not read by the client exceed the limit of {self.max_queued_bytes} "
                "(--max-consume-queue-bytes); read the stream",
                retry_after_ms=1000,
            )
        )

    def _next_queued(self) -> pb.ConsumeResponse | None:
        with self._queue_lock:
            if not self.outbound:
                return None
            msg, size = self.outbound.popleft()
            self.queued_bytes -= size
            self.metrics.consume_queue_bytes.dec(size)
            return msg

    def _drop_queued(self) -> None:
        """Forget what waits (caller holds `_queue_lock`)."""
        self.outbound.clear()
        self.metrics.consume_queue_bytes.dec(self.queued_bytes)
        self.queued_bytes = 0

    def fail(self, exc: BrokerError) -> None:
        """End the stream with `exc`'s status."""
        with self._queue_lock:
            if self.failure is None:
                self.failure = exc
        self.close()

    def close(self) -> None:
        """End the stream (the response thread then leaves the group, in `finish`)."""
        self.closed.set()
        self.wake.set()

    # ---- responses (the gRPC thread running the call) -----------------------------------

    def responses(self) -> Iterator[pb.ConsumeResponse]:
        """Control messages and records, until the stream closes.

        Control messages queued before the close (the join's assignment, a commit's
        ack) are still sent: a member that joins and leaves at once gets its answer.
        """
        while not self.closed.is_set():
            self.wake.wait(0.5)
            self.wake.clear()
            while (msg := self._next_queued()) is not None:
                yield msg
            if self.role == "consumer":
                yield from self._deliver()
        while (msg := self._next_queued()) is not None:
            yield msg

    def _deliver(self) -> Iterator[pb.ConsumeResponse]:
        with self.lock:
            generation, credit = self.generation, self.credit
            positions = dict(self.positions)
        order = sorted(positions)
        if order:  # start each round at the next partition, so a backlog cannot starve others
            self._turn = (self._turn + 1) % len(order)
            order = order[self._turn :] + order[: self._turn]
        for p in order:
            pos = positions[p]
            if credit <= 0 or self.outbound or self.closed.is_set():
                break
            room = self.max_unacked - self.unacked
            if room <= 0 and self.unacked:
                self._pause()
                break
            tp = TopicPartition(self.topic, p)
            for rec in self.wal.read(tp, pos, min(credit, max(room, 1), READ_CHUNK_POINTS)):
                with self.lock:
                    if self.generation != generation or self.positions.get(p) != pos:
                        self.wake.set()
                        return
                    step = rec.next_offset - pos
                    if self.unacked and self.unacked + step > self.max_unacked:
                        self._pause()
                        return
                    self._paused = False
                    self.unacked += step
                    self.positions[p] = pos = rec.next_offset
                    self.credit -= rec.count
                    credit = self.credit
                self.metrics.delivered.labels(self.topic, self.group).inc(rec.count)
                self.wake.set()
                yield pb.ConsumeResponse(
                    records=pb.Records(
                        topic=self.topic,
                        partition=p,
                        base_offset=rec.base_offset,
                        count=rec.count,
                        publish_time_ns=rec.publish_time_ns,
                        payload=rec.payload,
                        generation=generation,
                    )
                )

    def _pause(self) -> None:
        """Delivery stops at `max_unacked` until the member commits (counted once per pause)."""
        if not self._paused:
            self._paused = True
            self.metrics.unacked_pauses.inc()

    def finish(self) -> None:
        """Leave the group and stop listening to the log (idempotent)."""
        with self._queue_lock:
            self._drop_queued()
        self.wal.unsubscribe(self.wake)
        if self.member_id:
            self.coordinator.leave(self.group, self.member_id, reason="stream closed")
            self.metrics.subscribers.labels(self.group, self.role).dec()
            self.member_id = ""

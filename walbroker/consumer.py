"""The group consumer: join, receive records under credit-based flow control, commit, leave.

Delivery is at-least-once. `poll` hands out records of the partitions the member
owns in the current generation and advances its positions; `commit` stores those
positions (or explicit offsets) and returns the points it covers to the broker
as credit, so at most `max_unacked_points` points are ever delivered but not
committed. A member that stops committing (a collector whose store is down)
stops receiving.

Rebalances are cooperative: partitions an assignment takes away stay owned by
this member until it releases them. Without an `on_revoke` callback they are
released at once (queued records of theirs are dropped and redelivered to the
new owner). With one, the callback is told (on the io thread; it must not
block) and the application calls `release` once it has flushed and committed.

When the broker restarts or the stream breaks, the `consumer-io` loop rejoins
with the same member id after a backoff; records not yet polled are dropped and
redelivered from the committed offsets. A record may start before the member's
position (after an offset reset into its middle): `Message.skip` says how many
of its first points to ignore.

Thread-safety: `poll`, `commit` and `close` may be called from any thread; the
`consumer-io` loop owns the stream and `_cond` guards the shared state. The `on_revoke`
and `on_assignment` callbacks run on the io thread. If that loop dies of an unexpected
error (a callback that raises, a bug), waiting commits fail and every later `poll` and
`commit` raises `LoopCrashed` (`walbroker.loops`), so the application stops instead of
polling a dead member forever.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Literal

import grpc

from proto.gen import walbroker_pb2 as pb
from walbroker.client import Backoff, channel, error_from_rpc, error_from_status, stub
from walbroker.credentials import ClientSecurity
from walbroker.errors import AccessError, BrokerError, Code, StaleGeneration, Unavailable
from walbroker.loops import LoopCrashed, run_loop

log = logging.getLogger(__name__)

# While the topic does not exist, the member rejoins every second; it warns this often.
MISSING_TOPIC_WARN_S = 300.0


@dataclass(frozen=True, slots=True)
class Message:
    """One delivered record (a batch of `count` points starting at `base_offset`)."""

    topic: str
    partition: int
    base_offset: int
    count: int
    publish_time_ns: int
    payload: bytes
    generation: int
    skip: int = 0

    @property
    def next_offset(self) -> int:
        """The offset after this record's last point."""
        return self.base_offset + self.count


@dataclass(frozen=True, slots=True)
class Assignment:
    """The member's partitions in one generation, with the position each starts from."""

    generation: int
    member_id: str
    positions: dict[int, int]
    restarted: frozenset[int]
    partition_count: int
    # partition -> grant epoch; producer-group members fence their batches with it
    epochs: dict[int, int] = field(default_factory=dict)


class Consumer:
    """A member of a consumer group (or, with role='producer', of a producer group)."""

    def __init__(
        self,
        target: str,
        group: str,
        topic: str,
        *,
        client_id: str = "",
        role: Literal["consumer", "producer"] = "consumer",
        max_unacked_points: int = 100_000,
        session_timeout_ms: int = 10_000,
        on_assignment: Callable[[Assignment], None] | None = None,
        on_revoke: Callable[[set[int]], None] | None = None,
        security: ClientSecurity | None = None,
    ) -> None:
        self.target, self.group, self.topic, self.role = target, group, topic, role
        self.client_id = client_id or f"{socket.gethostname()}-{os.getpid()}"
        self.max_unacked = max_unacked_points
        self.session_timeout_ms = session_timeout_ms
        self.on_assignment = on_assignment
        self.on_revoke = on_revoke
        self.member_id = ""
        self.assignment: Assignment | None = None
        self.last_error: BrokerError | None = None
        # Set when the broker refused our credentials: the loop has stopped; poll raises it.
        # Why the member stopped for good: credentials refused, or its io loop crashed.
        self.failure: AccessError | LoopCrashed | None = None
        self._channel = channel(target, security)
        self._cond = threading.Condition()
        self._queue: deque[Message] = deque()
        self._positions: dict[int, int] = {}
        self._uncredited = 0
        self._requests: queue.Queue[pb.ConsumeRequest | None] = queue.Queue()
        self._commits: dict[int, Future[pb.CommitAck]] = {}
        self._commit_ids = itertools.count(1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._crash: LoopCrashed | None = None  # set once, by the io loop's crash handler

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self) -> Consumer:
        """Start the `consumer-io` loop (it joins, and rejoins after failures)."""
        self._thread = threading.Thread(
            target=run_loop,
            args=("consumer-io", self._io_loop, self._crashed),
            kwargs={"group": self.group},
            name="consumer-io",
            daemon=True,
        )
        self._thread.start()
        return self

    def _crashed(self, crash: LoopCrashed) -> None:
        """The io loop died: fail waiting commits, wake `poll`, fail every later call."""
        with self._cond:
            self._crash = crash
            if self.failure is None:
                self.failure = crash
            self._cond.notify_all()
        for fut in list(self._commits.values()):
            if not fut.done():
                fut.set_exception(crash)

    def _raise_crash(self) -> None:
        if self._crash is not None:
            raise self._crash

    def wait_for_assignment(self, timeout_s: float = 30.0) -> Assignment:
        """Block until the member has an assignment."""
        with self._cond:
            if not self._cond.wait_for(
                lambda: (
                    self.assignment is not None
                    or self.failure is not None
                    or self._crash is not None
                ),
                timeout_s,
            ):
                raise TimeoutError(f"no assignment from group {self.group!r}")
            self._raise_crash()
            if self.failure is not None:
                raise self.failure
            assert self.assignment is not None
            return self.assignment

    def close(self) -> None:
        """Leave the group and stop the loop."""
        self._stop.set()
        self._requests.put(pb.ConsumeRequest(leave=pb.Leave()))
        self._requests.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._channel.close()

    # ---- the application's side ------------------------------------------------------------

    def poll(self, timeout_s: float = 1.0, max_messages: int = 1000) -> list[Message]:
        """Records of owned partitions in offset order; advances positions; [] on timeout."""
        out: list[Message] = []
        with self._cond:
            self._cond.wait_for(
                lambda: bool(self._queue) or self._stop.is_set() or self._crash is not None,
                timeout_s,
            )
            self._raise_crash()
            if self.failure is not None:
                raise self.failure
            while self._queue and len(out) < max_messages:
                msg = self._queue.popleft()
                pos = self._positions.get(msg.partition)
                self._uncredited += msg.count
                if pos is None or msg.next_offset <= pos:
                    continue  # revoked, or already consumed
                if msg.base_offset < pos:
                    msg = _with_skip(msg, pos - msg.base_offset)
                self._positions[msg.partition] = msg.next_offset
                out.append(msg)
        return out

    def positions(self) -> dict[int, int]:
        """The next offset to consume per owned partition."""
        with self._cond:
            return dict(self._positions)

    def release(self, partitions: set[int]) -> None:
        """Hand revoked partitions back to the group (after flushing and committing them)."""
        with self._cond:
            for p in partitions:
                self._positions.pop(p, None)
        self._requests.put(pb.ConsumeRequest(release=pb.Release(partitions=sorted(partitions))))

    def commit(
        self, offsets: dict[int, int] | None = None, timeout_s: float = 10.0, wait: bool = True
    ) -> bool:
        """Commit `offsets` (default: current positions) and return credit; True if stored.

        With `wait=False` the commit is sent and True returned at once; a refusal is then
        logged and kept in `last_error` when its acknowledgement arrives (a refused commit
        only means those records are delivered again).
        """
        with self._cond:
            self._raise_crash()
            if self.assignment is None:
                return False
            generation = self.assignment.generation
            offsets = dict(self._positions) if offsets is None else offsets
            credit, self._uncredited = self._uncredited, 0
        if credit:
            self._requests.put(pb.ConsumeRequest(credit=pb.Credit(points=credit)))
        if not offsets:
            return True
        cid = next(self._commit_ids)
        fut: Future[pb.CommitAck] = Future()
        if wait:
            self._commits[cid] = fut
        self._requests.put(
            pb.ConsumeRequest(
                commit=pb.Commit(
                    commit_id=cid,
                    generation=generation,
                    offsets=[pb.PartitionOffset(partition=p, offset=o) for p, o in offsets.items()],
                )
            )
        )
        if not wait:
            return True
        if wait and self._crash is not None:  # crashed after the check above: no ack comes
            with contextlib.suppress(InvalidStateError):  # unless the crash handler set it
                fut.set_exception(self._crash)
        try:
            ack = fut.result(timeout_s)
        except (TimeoutError, BrokerError) as exc:
            self.last_error = exc if isinstance(exc, BrokerError) else Unavailable(str(exc))
            return False
        finally:
            self._commits.pop(cid, None)
        return self._accepted(ack)

    def _accepted(self, ack: pb.CommitAck) -> bool:
        """True for a stored commit; a refusal is logged and kept in `last_error`."""
        if ack.status.code == Code.OK:
            return True
        self.last_error = error_from_status(ack.status)
        log.info(
            "commit refused",
            extra={
                "group": self.group,
                "code": Code(ack.status.code).name,
                "reason": ack.status.message,
            },
        )
        return False

    # ---- the stream ------------------------------------------------------------------------

    def _io_loop(self) -> None:
        backoff = Backoff(max_ms=1_000)
        warned_at: float | None = None  # last warning that the topic does not exist
        while not self._stop.is_set():
            try:
                self._stream_once(backoff)
            except AccessError as exc:
                self._give_up(exc)
                return
            except BrokerError as exc:
                self.last_error = exc
                self._reset_stream(exc)
                extra = {"group": self.group, "code": exc.code.name, "reason": exc.message}
                if f"unknown topic {self.topic!r}" not in exc.message:
                    log.info("consume stream interrupted; rejoining", extra=extra)
                elif warned_at is None or time.monotonic() - warned_at >= MISSING_TOPIC_WARN_S:
                    warned_at = time.monotonic()
                    log.warning(
                        "topic %r does not exist on the broker at %s: start the broker with "
                        "--topic %s (or --auto-create-topics), or create it: walbroker admin "
                        "--broker %s create-topic %s; retrying until it exists",
                        self.topic,
                        self.target,
                        self.topic,
                        self.target,
                        self.topic,
                        extra={**extra, "topic": self.topic, "broker": self.target},
                    )
                else:
                    log.debug("topic still missing; rejoining", extra=extra)
                if not backoff.wait(self._stop, exc.retry_after_ms):
                    return

    def _stream_once(self, backoff: Backoff) -> None:
        join = pb.Join(
            group=self.group,
            topic=self.topic,
            member_id=self.member_id,
            client_id=self.client_id,
            session_timeout_ms=self.session_timeout_ms,
            credit_points=self.max_unacked,
            role=pb.CONSUMER if self.role == "consumer" else pb.PRODUCER,
        )
        self._requests = queue.Queue()
        call = stub(self._channel).Consume(self._outgoing(join, self._requests))
        try:
            for resp in call:
                backoff.reset()
                self._on_response(resp)
        except grpc.RpcError as exc:
            if not self._stop.is_set():
                raise error_from_rpc(exc, self._channel) from None
        finally:
            call.cancel()
        if not self._stop.is_set():
            raise Unavailable("consume stream ended")

    def _give_up(self, exc: AccessError) -> None:
        """The broker refused our credentials or transport: stop; poll raises `exc`."""
        log.error(
            "group membership refused: check the token and TLS settings",
            extra={"group": self.group, "code": exc.code.name, "reason": exc.message},
        )
        self._reset_stream(exc)
        with self._cond:
            self.last_error = self.failure = exc
            self._stop.set()
            self._cond.notify_all()

    def _outgoing(
        self, join: pb.Join, requests: queue.Queue[pb.ConsumeRequest | None]
    ) -> Iterator[pb.ConsumeRequest]:
        yield pb.ConsumeRequest(join=join)
        interval = self.session_timeout_ms / 3000
        while True:
            try:
                req = requests.get(timeout=interval)
            except queue.Empty:
                req = pb.ConsumeRequest(heartbeat=pb.Heartbeat())
            if req is None:
                return
            yield req

    def _on_response(self, resp: pb.ConsumeResponse) -> None:
        kind = resp.WhichOneof("kind")
        if kind == "records":
            r = resp.records
            msg = Message(
                r.topic,
                r.partition,
                r.base_offset,
                r.count,
                r.publish_time_ns,
                r.payload,
                r.generation,
            )
            with self._cond:
                if self.assignment and r.generation == self.assignment.generation:
                    self._queue.append(msg)
                    self._cond.notify_all()
                else:
                    self._uncredited += r.count
        elif kind == "assignment":
            self._on_assigned(resp.assignment)
        elif kind == "commit_ack":
            fut = self._commits.get(resp.commit_ack.commit_id)
            if fut is None:
                self._accepted(resp.commit_ack)  # a commit sent without waiting
            elif not fut.done():
                fut.set_result(resp.commit_ack)

    def _on_assigned(self, a: pb.Assignment) -> None:
        positions = {ap.partition: ap.position for ap in a.partitions}
        restarted = frozenset(ap.partition for ap in a.partitions if ap.restarted)
        with self._cond:
            self.member_id = a.member_id
            owned = set(self.assignment.positions) if self.assignment else set()
            revoked = owned - set(positions)
            kept = {
                p: self._positions[p]
                for p in positions
                if p in self._positions and p not in restarted
            }
            held = (
                {}
                if self.on_revoke is None
                else {p: self._positions[p] for p in revoked if p in self._positions}
            )
            self._positions = {**positions, **kept, **held}
            self._drop_queued(lambda m: m.partition not in kept)
            self.assignment = Assignment(
                a.generation,
                a.member_id,
                {**positions, **kept},
                restarted,
                a.partition_count,
                {ap.partition: ap.epoch for ap in a.partitions},
            )
            self._cond.notify_all()
        log.info(
            "assignment",
            extra={
                "group": self.group,
                "generation": a.generation,
                "partitions": sorted(positions),
                "revoked": sorted(revoked),
            },
        )
        if revoked and self.on_revoke is None:
            self._requests.put(pb.ConsumeRequest(release=pb.Release(partitions=sorted(revoked))))
        elif revoked and self.on_revoke is not None:
            self.on_revoke(revoked)
        if self.on_assignment is not None:
            self.on_assignment(self.assignment)

    def _drop_queued(self, drop: Callable[[Message], bool]) -> None:
        keep: deque[Message] = deque()
        for m in self._queue:
            if drop(m):
                self._uncredited += m.count
            else:
                keep.append(m)
        self._queue = keep

    def _reset_stream(self, exc: BrokerError) -> None:
        """Forget what the broken stream delivered; fail commits waiting on it."""
        with self._cond:
            self._queue.clear()
            self._uncredited = 0
            self.assignment = None
            self._positions = {}
        for fut in list(self._commits.values()):
            if not fut.done():
                fut.set_exception(exc if isinstance(exc, BrokerError) else StaleGeneration(""))


def _with_skip(msg: Message, skip: int) -> Message:
    return Message(
        msg.topic,
        msg.partition,
        msg.base_offset,
        msg.count,
        msg.publish_time_ns,
        msg.payload,
        msg.generation,
        skip,
    )

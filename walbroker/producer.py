"""The idempotent, batching producer: key -> partition, size/linger batches, ordered retries.

Items are accumulated per partition and encoded into one opaque batch by the
caller's `encode` function when the batch reaches `batch_size` items or
`linger_ms` has passed. Each sealed batch gets the next sequence number of its
partition. Batches are pipelined over one long-lived Publish stream; when the
broker answers RESOURCE_EXHAUSTED, an out-of-order sequence, or the stream
breaks (the broker restarted), the producer waits (backoff with jitter, at
least the broker's retry-after hint), opens a new stream and resends every
unacknowledged batch in sequence order. The broker acknowledges a batch it
already appended as a duplicate, so nothing is appended twice.

`send` blocks while `max_pending_points` items, or `max_in_flight_bytes` bytes of
sealed batches, are neither acknowledged nor
dropped: that bound is the producer's backpressure on its caller.

Thread-safety: `send`, `flush` and `close` may be called from any thread. The
`producer-linger` loop seals old batches; the `producer-io` loop owns the stream. Either
loop dying of an unexpected error (an encoder or callback that raises, a bug) stops both
and makes every later `send` and `flush` raise `LoopCrashed` (`walbroker.loops`): the
producer never stalls its caller with a dead thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import grpc

from proto.gen import walbroker_pb2 as pb
from walbroker.client import Backoff, channel, error_from_rpc, error_from_status, metadata, stub
from walbroker.credentials import ClientSecurity
from walbroker.errors import AccessError, BrokerError, Code, InvalidArgument, Unavailable
from walbroker.inflight import Batch, Grant, InFlight
from walbroker.loops import LoopCrashed, run_loop
from walbroker.types import partition_for_key

log = logging.getLogger(__name__)

T = TypeVar("T")
# Publishing refused (or cut) this long without an acknowledgement is a warning, once per
# stall: each refusal is an info line, and `gputel-up` on a terminal shows warnings only, so a
# full broker disk stalled an import there without a word.
STALL_WARNING_S = 10.0


@dataclass(slots=True)
class ProducerStats:
    """Counters a caller can export as metrics."""

    acked_points: int = 0
    acked_batches: int = 0
    duplicates: int = 0
    backpressure: int = 0
    reconnects: int = 0
    failed_points: int = 0


@dataclass(slots=True)
class _Open:
    items: list[object] = field(default_factory=list)
    since: float = 0.0


class Producer(Generic[T]):
    """Publishes items of type T to one topic, batched per partition, exactly once per batch."""

    def __init__(
        self,
        target: str,
        topic: str,
        encode: Callable[[list[T]], bytes] | None = None,
        *,
        producer_id: str = "",
        batch_size: int = 1000,
        linger_ms: int = 20,
        max_pending_points: int = 200_000,
        max_batch_bytes: int = 4 * 1024 * 1024,
        max_in_flight_bytes: int = 64 * 1024 * 1024,
        on_ack: Callable[[Batch, pb.PublishAck], None] | None = None,
        on_backpressure: Callable[[BrokerError], None] | None = None,
        on_fenced: Callable[[int, int], None] | None = None,
        security: ClientSecurity | None = None,
    ) -> None:
        self.target, self.topic, self.encode = target, topic, encode
        self.producer_id = producer_id or uuid.uuid4().hex
        self.batch_size, self.linger_s = batch_size, linger_ms / 1000
        self.max_pending, self.max_batch_bytes = max_pending_points, max_batch_bytes
        self.max_in_flight_bytes = max_in_flight_bytes
        self.on_ack, self.on_backpressure = on_ack, on_backpressure
        self.on_fenced = on_fenced
        self.stats = ProducerStats()
        self.partitions = 0
        self._channel = channel(target, security)
        self._cond = threading.Condition()
        self._open: dict[int, _Open] = {}
        self._inflight = InFlight(topic, self.producer_id)  # guarded by _cond
        self._outbox: queue.Queue[Batch | None] = queue.Queue()
        self._stop = threading.Event()
        self._opened = threading.Event()  # set when a batch opens: wakes the linger loop
        self._threads: list[threading.Thread] = []
        self._failure: BrokerError | None = None  # one refused batch: raised once
        self._crash: LoopCrashed | None = None  # a loop died: raised by every call after
        self._stalled_since: float | None = None  # producer-io only: first refusal of a stall
        self._stall_warned = False  # producer-io only

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> Producer[T]:
        """Learn the topic's partition count (waiting for the broker) and start the loops."""
        deadline = time.monotonic() + timeout_s
        backoff = Backoff()
        while True:
            try:
                md = metadata(self._channel, [self.topic])
                self.partitions = len(md.topics[0].partitions)
                break
            except BrokerError as exc:
                if exc.code == Code.NOT_FOUND:
                    md = metadata(self._channel)
                    self.partitions = md.default_partitions
                    break
                if isinstance(exc, AccessError) or time.monotonic() > deadline:
                    raise
                time.sleep(backoff.next_s())
        for name, body in (("producer-io", self._io_loop), ("producer-linger", self._linger)):
            args = (name, body, self._crashed)
            kwargs = {"producer": self.producer_id}
            t = threading.Thread(target=run_loop, args=args, kwargs=kwargs, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __enter__(self) -> Producer[T]:
        return self if self._threads else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush what is pending (up to `timeout_s`), then stop the loops."""
        try:
            self.flush(timeout_s)
        finally:
            self._stop.set()
            self._opened.set()
            self._outbox.put(None)
            with self._cond:
                self._cond.notify_all()
            for t in self._threads:
                t.join(timeout=5)
            self._channel.close()

    def _crashed(self, crash: LoopCrashed) -> None:
        """A loop died: stop the other one and fail every waiting and later call."""
        with self._cond:
            self._crash = crash
            self._cond.notify_all()
        self._stop.set()
        self._opened.set()
        self._outbox.put(None)

    # ---- sending -------------------------------------------------------------------------

    def track(self, partition: int, group: str, epoch: int, progress: int) -> None:
        """Fence the partition's next batches with a producer-group grant (exactly-once handover).

        Each batch then carries `progress` + the points sent since, which the broker stores
        as the group's progress in the same transaction as the batch — or refuses
        (ABORTED) once the grant has moved on, in which case every unacknowledged batch of
        the partition is dropped and `on_fenced(partition, points)` is called; batches sent
        for it after that are dropped too until it is tracked under a new grant.
        """
        with self._cond:
            self._inflight.grants[partition] = Grant(group, epoch, progress)

    def untrack(self, partition: int) -> None:
        """Stop fencing a partition's batches."""
        with self._cond:
            self._inflight.grants.pop(partition, None)

    def partition_of(self, key: str) -> int:
        """The partition a key maps to (CRC-32 of its UTF-8 bytes)."""
        return partition_for_key(key, self.partitions)

    def send(
        self, key: str, item: T, partition: int | None = None, timeout_s: float | None = None
    ) -> None:
        """Add an item; blocks while too many points are pending (backpressure)."""
        if self.encode is None:
            raise TypeError("this producer has no encoder: it sends encoded batches (send_batch)")
        p = self.partition_of(key) if partition is None else partition
        with self._cond:
            if not self._cond.wait_for(self._has_room, timeout_s):
                raise TimeoutError("producer pending bound reached")
            self._raise_failure()
            batch = self._open.setdefault(p, _Open())
            if not batch.items:
                batch.since = time.monotonic()
                self._opened.set()
            batch.items.append(item)
            self._inflight.points += 1
            full = len(batch.items) >= self.batch_size
        if full:
            self._seal(p)

    def flush(self, timeout_s: float | None = None) -> None:
        """Send every open batch and wait until all are acknowledged."""
        for p in list(self._open):
            self._seal(p)
        with self._cond:
            if not self._cond.wait_for(
                lambda: (
                    self._inflight.points == 0 or self._failure is not None or self._stop.is_set()
                ),
                timeout_s,
            ):
                raise TimeoutError(f"{self._inflight.points} points still unacknowledged")
            self._raise_failure()

    def _has_room(self) -> bool:
        """True while the pending bounds allow another point (called with `_cond` held)."""
        inflight = self._inflight
        return self._stop.is_set() or (
            inflight.points < self.max_pending and inflight.bytes < self.max_in_flight_bytes
        )

    @property
    def pending_points(self) -> int:
        """Points added but not yet acknowledged."""
        return self._inflight.points

    def _raise_failure(self) -> None:
        if self._crash is not None:
            raise self._crash
        if self._failure is not None:
            exc = self._failure
            if not isinstance(exc, AccessError):  # a wrong credential stays wrong
                self._failure = None
            raise exc

    def _give_up(self, exc: AccessError) -> None:
        """The broker refused our credentials or transport: fail every send from now on."""
        log.error(
            "publish refused: check the token and TLS settings",
            extra={"code": exc.code.name, "reason": exc.message, "topic": self.topic},
        )
        with self._cond:
            self._failure = exc
            self._stop.set()
            self._cond.notify_all()

    def send_batch(
        self, partition: int, payload: bytes, count: int, timeout_s: float | None = None
    ) -> None:
        """Publish an already encoded batch of `count` points (bypasses the accumulator)."""
        with self._cond:
            if not self._cond.wait_for(self._has_room, timeout_s):
                raise TimeoutError("producer pending bound reached")
            self._raise_failure()
            self._inflight.points += count
        self._submit(partition, count, lambda: payload)

    def _seal(self, p: int) -> None:
        with self._cond:
            open_batch = self._open.pop(p, None)
            if open_batch is None or not open_batch.items:
                return
            items = open_batch.items
        encode = self.encode
        assert encode is not None  # items are only accepted with an encoder (send)
        self._submit(p, len(items), lambda: encode(items))  # type: ignore[arg-type]

    def _submit(self, p: int, count: int, payload: Callable[[], bytes]) -> None:
        """Give a batch the partition's next sequence number and queue it for sending."""
        with self._cond:
            batch = self._inflight.seal(p, count)
            if batch.dropped:  # the partition is fenced: its points leave the pending count
                self._cond.notify_all()
                return
        encoded = payload()
        with self._cond:
            if not self._inflight.encoded(batch, encoded):
                self._send_ready()  # fenced while it was being encoded: not sent
                return
            if len(encoded) <= self.max_batch_bytes:
                self._send_ready()
                return
        self._fail(
            batch,
            InvalidArgument(
                f"batch of {len(encoded)} bytes is over the {self.max_batch_bytes} byte limit"
            ),
        )

    def _send_ready(self) -> None:
        """Queue for the stream every batch whose earlier batches are queued (`_cond` held)."""
        for batch in self._inflight.ready():
            self._outbox.put(batch)

    def _linger(self) -> None:
        """Seal each open batch `linger_ms` after its first item; sleep while none is open."""
        while not self._stop.is_set():
            self._opened.clear()
            now = time.monotonic()
            with self._cond:
                since = [b.since for b in self._open.values() if b.items]
                due = [
                    p for p, b in self._open.items() if b.items and now - b.since >= self.linger_s
                ]
            for p in due:
                self._seal(p)
            if due:
                continue
            if since:
                self._stop.wait(min(since) + self.linger_s - now)
            else:
                self._opened.wait()

    # ---- the stream ----------------------------------------------------------------------

    def _io_loop(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                self._stream_once(backoff)
                return
            except AccessError as exc:
                self._give_up(exc)
                return
            except BrokerError as exc:
                self.stats.backpressure += 1
                if self.on_backpressure is not None:
                    self.on_backpressure(exc)
                log.info(
                    "publish interrupted; resending unacknowledged batches",
                    extra={
                        "code": exc.code.name,
                        "reason": exc.message,
                        "unacked": len(self._inflight.batches),
                    },
                )
                self._stalled(exc)
                if not backoff.wait(self._stop, exc.retry_after_ms):
                    return
                self.stats.reconnects += 1
                self._requeue()

    def _stalled(self, exc: BrokerError) -> None:
        """Warn once when publishing has been refused for `STALL_WARNING_S` (producer-io)."""
        now = time.monotonic()
        if self._stalled_since is None:
            self._stalled_since = now
        elif not self._stall_warned and now - self._stalled_since >= STALL_WARNING_S:
            self._stall_warned = True
            log.warning(
                "the broker has taken nothing for %.0f s; still resending: %s (%s). A full "
                "disk or disk budget clears when consumers commit or space is freed "
                "(docs/limits.md); `walbroker admin topics` and `groups` show the log and the lag",
                now - self._stalled_since,
                exc.message,
                exc.code.name,
                extra={"code": exc.code.name, "reason": exc.message, "target": self.target},
            )

    def _resumed(self) -> None:
        """An acknowledgement ends a stall (producer-io)."""
        if self._stall_warned and self._stalled_since is not None:
            log.warning(
                "the broker takes batches again after %.0f s",
                time.monotonic() - self._stalled_since,
                extra={"target": self.target},
            )
        self._stalled_since, self._stall_warned = None, False

    def _stream_once(self, backoff: Backoff) -> None:
        """Run one Publish stream until it ends; raise BrokerError to resend after a pause."""
        call = stub(self._channel).Publish(self._requests(self._outbox))
        try:
            for ack in call:
                err = self._on_ack(ack)
                if err is not None:
                    raise err
                backoff.reset()
        except grpc.RpcError as exc:
            if self._stop.is_set():
                return
            raise error_from_rpc(exc, self._channel) from None
        finally:
            call.cancel()
        if not self._stop.is_set():
            raise Unavailable("publish stream ended")

    @staticmethod
    def _requests(outbox: queue.Queue[Batch | None]) -> Iterator[pb.PublishRequest]:
        while (batch := outbox.get()) is not None:
            if batch.dropped:
                continue
            req = pb.PublishRequest(
                request_id=batch.request_id,
                topic=batch.topic,
                partition=batch.partition,
                payload=batch.payload,
                count=batch.count,
                producer_id=batch.producer_id,
                sequence=batch.sequence,
            )
            if batch.fence is not None:
                req.fence_group, req.fence_epoch, req.progress = batch.fence
            yield req

    def _requeue(self) -> None:
        """A fresh outbox holding every unacknowledged batch in sending order."""
        with self._cond:
            old, self._outbox = self._outbox, queue.Queue()
            old.put(None)
            for b in self._inflight.in_order():
                self._outbox.put(b)

    def _on_ack(self, ack: pb.PublishAck) -> BrokerError | None:
        with self._cond:
            batch = self._inflight.batches.get(ack.request_id)
        if batch is None:
            return None  # an ack for a batch resent and already acknowledged
        if ack.status.code == Code.ABORTED:
            self._fenced(batch)
            return None
        if ack.status.code != Code.OK:
            exc = error_from_status(ack.status, publish=True)
            if exc.retriable:
                return exc
            self._fail(batch, exc)
            return exc  # later batches of the partition were renumbered: resend them
        with self._cond:
            self._inflight.acked(ack.request_id)
            self.stats.acked_points += batch.count
            self.stats.acked_batches += 1
            self.stats.duplicates += int(ack.duplicate)
            self._cond.notify_all()
        if self._stalled_since is not None:
            self._resumed()
        if self.on_ack is not None:
            self.on_ack(batch, ack)
        return None

    def _fenced(self, batch: Batch) -> None:
        """The grant `batch` was sent under has moved on: drop that grant's batches."""
        with self._cond:
            dropped = self._inflight.fence(batch)
            self._cond.notify_all()
        points = sum(b.count for b in dropped)
        log.warning(
            "partition fenced: its batches were dropped",
            extra={"partition": batch.partition, "points": points, "batches": len(dropped)},
        )
        if self.on_fenced is not None:
            self.on_fenced(batch.partition, points)

    def _fail(self, batch: Batch, exc: BrokerError) -> None:
        """Drop a batch the broker will never take; the next send or flush raises `exc`."""
        log.error(
            "batch refused",
            extra={
                "partition": batch.partition,
                "points": batch.count,
                "code": exc.code.name,
                "reason": exc.message,
            },
        )
        with self._cond:
            self._inflight.fail(batch)
            self._send_ready()  # batches sealed after it no longer wait for it
            self.stats.failed_points += batch.count
            self._failure = exc
            self._cond.notify_all()

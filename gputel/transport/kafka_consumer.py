"""The collector's consumer-group member on Kafka: manual commits, cooperative rebalancing.

`poll` hands out records (one published batch each: `KafkaRecord`, whose `next_offset` is the
Kafka offset + 1) of the partitions the member owns, reading only committed transactions.
`commit` stores offsets the collector has persisted: waited for (before a release or leaving)
or sent asynchronously (after an ordinary flush). Auto-commit is off, always.

Rebalances (`cooperative-sticky`): librdkafka calls the revoke callback from inside `poll`, on
the collector's loop thread, and takes the partitions away when it returns. Before they go,
the callback commits, synchronously, the newest offsets the collector persisted for them (an
async commit may still be in flight): what was stored is never delivered to the new owner
again. Records held but not yet stored are not committed; the collector drops them
(`on_revoke`) and the new owner reads them again (the store's writes are idempotent, so that
costs a rewrite, never a duplicate). Lost partitions (session expired) commit nothing.

Backpressure: the collector stops polling while its store is down, and librdkafka prefetches
at most `queued.max.messages.kbytes`, sized from `max_unacked_points`. Past
`max.poll.interval.ms` (default 5 min) without a poll Kafka removes the member; it rejoins at
the next poll from the committed offsets.

Transaction markers: a streamer's transactions leave one control record per partition after
their batches. The consumer never hands them out, but they take offsets, so committing
"the offset after the last record stored" would leave the committed offset one short of the
log end forever (a lag of 1 that never drains). librdkafka's position skips them; when the
collector commits exactly what it was handed, the commit moves on to that position (the
gap is markers only: the position is read right after `consume`, on the same thread).

Lag: the log end offset (librdkafka's cached high watermark) minus the committed offset,
per owned partition, in records, refreshed by `poll` every `LAG_REFRESH_S`; `lag()` returns
that snapshot.

Thread-safety: confluent-kafka 2.16 lets one thread at a time into a consumer (a waiting
thread spins on a gate that a polling loop retakes at once: a commit from another thread
could wait for seconds). So every call goes through `_gate`, and `poll` consumes in slices
of `POLL_SLICE_S`, giving way between slices to a waiting `commit` (the collector's writer
thread) or `close`. The rebalance callbacks run inside `consume`, on the polling thread.
`_lock` guards positions, committed offsets, the lag snapshot and the assignment.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from gputel.transport.base import Assignment
from gputel.transport.kafka_common import CONSUMER, COUNT_HEADER, client_config
from gputel.transport.kafka_errors import from_kafka
from walbroker.errors import BrokerError

log = logging.getLogger(__name__)

BYTES_PER_POINT = 32  # a columnar batch's size per point, generously: sizes the prefetch
COMMIT_ON_REVOKE_S = 10.0
CLOSE_REVOKE_S = 10.0  # how long close waits for the group to take its partitions back
POLL_SLICE_S = 0.05  # the longest a commit from another thread waits for the poller
LAG_REFRESH_S = 1.0


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """One Kafka message: a batch of `count` points at Kafka offset `base_offset`."""

    topic: str
    partition: int
    base_offset: int
    count: int
    publish_time_ns: int
    payload: bytes
    skip: int = 0

    @property
    def next_offset(self) -> int:
        """The Kafka offset to commit once this record is stored (offsets count records)."""
        return self.base_offset + 1


def _count(msg: Message) -> int:
    """Points the producer declared (-1 without the header: the record is then dead-lettered)."""
    headers = msg.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    for key, value in pairs:
        if key == COUNT_HEADER and value is not None:
            try:
                return int(value)
            except ValueError:
                return -1
    return -1


class KafkaGroupConsumer:
    """A member of consumer group `group` on `topic`."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topic: str,
        properties: Mapping[str, str],
        *,
        client_id: str = "gputel-collector",
        max_unacked_points: int = 100_000,
        session_timeout_ms: int = 10_000,
        on_revoke: Callable[[set[int]], None] | None = None,
    ) -> None:
        self.group, self.topic = group, topic
        self.on_revoke = on_revoke
        prefetch_kb = max(1024, max_unacked_points * BYTES_PER_POINT // 1024)
        self._conf = client_config(
            bootstrap, properties,
            {**CONSUMER, "group.id": group, "client.id": client_id,
             "session.timeout.ms": session_timeout_ms,
             "queued.max.messages.kbytes": prefetch_kb,
             "on_commit": self._on_commit},
        )  # fmt: skip
        self._consumer: Consumer | None = None
        self._gate = threading.Lock()  # one thread in the consumer at a time (module doc)
        self._others = 0  # threads other than the poller waiting for `_gate`
        self._others_cond = threading.Condition()
        self._lock = threading.Lock()
        self._positions: dict[int, int] = {}  # next offset to hand out (after the last handed)
        self._skip_to: dict[int, int] = {}  # librdkafka's position, past transaction markers
        self._committed: dict[int, int] = {}  # offsets this member committed (or found)
        self._lag: dict[int, int] = {}
        self._lag_at = 0.0
        self._generation = 0
        self.assignment: Assignment | None = None
        self.last_error: BrokerError | None = None

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self) -> KafkaGroupConsumer:
        """Create the client and subscribe; the group assigns partitions during `poll`."""
        self._consumer = Consumer(self._conf)
        self._consumer.subscribe(
            [self.topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost
        )
        return self

    def close(self) -> None:
        """Leave the group (revoking, and so committing, what it owns).

        The revocation is served by `poll` after `unsubscribe`, before `close`: a revocation
        that `close` itself has to serve calls the client's rebalance protocol from inside
        close, which can block forever (librdkafka issue 4041; seen here with
        cooperative-sticky while another member was joining).
        """
        with self._call() as consumer:
            if consumer is not None:
                try:
                    consumer.unsubscribe()
                    deadline = time.monotonic() + CLOSE_REVOKE_S
                    while consumer.assignment() and time.monotonic() < deadline:
                        consumer.poll(POLL_SLICE_S)  # records of revoked partitions: dropped
                except KafkaException as exc:
                    log.warning("leaving the group before close failed", extra={"reason": str(exc)})
                consumer.close()
        self._consumer = None

    @contextmanager
    def _call(self) -> Iterator[Consumer | None]:
        """Enter the consumer from a thread other than the poller, ahead of its next slice."""
        with self._others_cond:
            self._others += 1
        try:
            with self._gate:
                yield self._consumer
        finally:
            with self._others_cond:
                self._others -= 1
                self._others_cond.notify_all()

    # ---- the application's side ------------------------------------------------------------

    def poll(self, timeout_s: float = 1.0, max_messages: int = 1000) -> Sequence[KafkaRecord]:
        """Records of owned partitions in offset order; [] on timeout."""
        consumer = self._consumer
        assert consumer is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        while True:
            with self._others_cond:  # give way to a waiting commit or close first
                self._others_cond.wait_for(lambda: self._others == 0, POLL_SLICE_S)
            with self._gate:
                left = max(0.0, min(POLL_SLICE_S, deadline - time.monotonic()))
                try:
                    msgs = consumer.consume(max_messages, left)
                except KafkaException as exc:
                    raise from_kafka(exc) from None
                out = self._records(msgs)
                self._track(consumer)
            if out or time.monotonic() >= deadline:
                return out

    def _records(self, msgs: list[Message]) -> list[KafkaRecord]:
        out: list[KafkaRecord] = []
        with self._lock:
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    self._on_error(err)
                    continue
                p, offset = msg.partition(), msg.offset()
                if p is None or offset is None:
                    continue
                pos = self._positions.get(p)
                if pos is None or offset < pos:
                    continue  # revoked meanwhile, or already handed out
                self._positions[p] = offset + 1
                _, ts = msg.timestamp()
                value = msg.value() or b""
                out.append(KafkaRecord(self.topic, p, offset, _count(msg), ts * 1_000_000, value))
        return out

    def _track(self, consumer: Consumer) -> None:
        """Right after `consume` (gate held): positions past markers, and the lag when due."""
        with self._lock:
            owned = list(self._positions)
        if not owned:
            return
        tps = [TopicPartition(self.topic, p) for p in owned]
        try:
            positions = consumer.position(tps)
        except KafkaException:
            return
        now = time.monotonic()
        marks: dict[int, int] = {}
        if now - self._lag_at >= LAG_REFRESH_S:
            self._lag_at = now
            for tp in tps:
                try:
                    marks[tp.partition] = consumer.get_watermark_offsets(tp, cached=True)[1]
                except KafkaException:
                    continue
        with self._lock:
            for tp in positions:
                handed = self._positions.get(tp.partition)
                if handed is not None and tp.offset > handed:
                    self._skip_to[tp.partition] = tp.offset
            for p, high in marks.items():
                if high >= 0 and p in self._positions:
                    self._lag[p] = max(0, high - self._committed.get(p, 0))

    def _on_error(self, err: KafkaError) -> None:
        error = from_kafka(err)
        if err.fatal():
            raise error
        self.last_error = error
        log.warning("consumer error", extra={"group": self.group, "reason": error.message})

    def positions(self) -> dict[int, int]:
        """The next offset to hand out per owned partition."""
        with self._lock:
            return dict(self._positions)

    def release(self, partitions: set[int]) -> None:
        """Nothing to do: the revoke callback already let the partitions go (module doc).

        Not even forgetting their positions: by the time the collector calls this, the
        group may have given a partition back to this member (revoked and assigned again
        in one rebalance), and forgetting it then would drop its records for good.
        """

    def lag(self) -> dict[int, int]:
        """Log end offset minus committed offset per owned partition, in records (snapshot)."""
        with self._lock:
            return {p: n for p, n in self._lag.items() if p in self._positions}

    def commit(
        self, offsets: dict[int, int] | None = None, timeout_s: float = 10.0, wait: bool = True
    ) -> bool:
        """Commit `offsets` (default: positions); True if stored (or sent, without `wait`)."""
        offsets = self._past_markers(self.positions() if offsets is None else offsets)
        if not offsets:
            return True
        tps = [TopicPartition(self.topic, p, o) for p, o in sorted(offsets.items())]
        with self._call() as consumer:
            if consumer is None:
                return False
            done: list[TopicPartition] = []
            try:
                if wait:
                    done = consumer.commit(offsets=tps, asynchronous=False)
                else:
                    consumer.commit(offsets=tps, asynchronous=True)
            except KafkaException as exc:
                self.last_error = from_kafka(exc)
                log.info("commit refused", extra={"group": self.group, "reason": str(exc)})
                return False
        for tp in done:
            if tp.error is not None:
                self.last_error = from_kafka(tp.error)
                return False
        self._note_committed(offsets)
        return True

    def _past_markers(self, offsets: Mapping[int, int]) -> dict[int, int]:
        """Offsets moved past trailing transaction markers where all handed out is committed."""
        with self._lock:
            return {
                p: self._skip_to[p]
                if o == self._positions.get(p) and self._skip_to.get(p, 0) > o
                else o
                for p, o in offsets.items()
            }

    def _note_committed(self, offsets: Mapping[int, int]) -> None:
        with self._lock:
            for p, o in offsets.items():
                self._committed[p] = max(o, self._committed.get(p, 0))

    def _on_commit(self, err: KafkaError | None, _tps: list[TopicPartition]) -> None:
        """An asynchronous commit's result (called during `poll`): a refusal is only logged."""
        if err is not None and err.code() != KafkaError._NO_OFFSET:
            self.last_error = from_kafka(err)
            log.info("commit refused", extra={"group": self.group, "reason": err.str()})

    # ---- rebalance callbacks (inside `consume`, on the polling thread) -----------------------

    def _assigned(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        parts = {tp.partition for tp in tps}
        try:
            found = consumer.committed(tps, timeout=COMMIT_ON_REVOKE_S)
        except KafkaException:
            found = []
        with self._lock:
            for p in parts:
                self._positions[p] = 0  # librdkafka starts at the committed offset
            for tp in found:
                if tp.offset >= 0:
                    self._committed[tp.partition] = tp.offset
            self._reassign()
        log.info("partitions assigned", extra={"group": self.group, "partitions": sorted(parts)})

    def _revoked(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        parts = {tp.partition for tp in tps}
        with self._lock:
            stored = {p: self._committed[p] for p in parts if p in self._committed}
        if stored:
            done = [TopicPartition(self.topic, p, o) for p, o in stored.items()]
            try:
                consumer.commit(offsets=done, asynchronous=False)
            except KafkaException as exc:
                log.warning("commit on revoke failed", extra={"reason": str(exc)})
        self._gone(parts, "partitions revoked")

    def _lost(self, _consumer: Consumer, tps: list[TopicPartition]) -> None:
        self._gone({tp.partition for tp in tps}, "partitions lost")

    def _gone(self, parts: set[int], what: str) -> None:
        with self._lock:
            for p in parts:
                for state in (self._positions, self._committed, self._skip_to, self._lag):
                    state.pop(p, None)
            self._reassign()
        log.info(what, extra={"group": self.group, "partitions": sorted(parts)})
        if self.on_revoke is not None and parts:
            self.on_revoke(parts)

    def _reassign(self) -> None:
        """A new `assignment` after every change (with `_lock` held)."""
        self._generation += 1
        self.assignment = Assignment(
            self._generation, self.group, dict(self._positions), frozenset(),
            len(self._positions),
        )  # fmt: skip

"""The streamer on Kafka: one transactional producer per (group, topic), fenced by Kafka itself.

Kafka has no producer groups, so a CSV is streamed by ONE streamer per `--group` (for live
scraping: one streamer per target shard, each with its own group). What makes that safe is
the transactional id, derived from the job, not from the process:

    transactional.id = gputel-streamer.<group>.<topic>

- **Progress travels with the data.** Each transaction holds the batches produced since the
  last one AND, through `send_offsets_to_transaction`, the new progress (rows sent, across
  passes) of every partition it touched, stored as the committed offsets of consumer group
  `<group>` on the telemetry topic. Both become visible together or not at all (consumers read
  with `isolation.level=read_committed`), so the committed progress is exactly what the log
  holds, as on walbroker (`streamer.ownership`).
- **A second streamer started by mistake cannot double the data.** Its `init_transactions`
  (same transactional id) bumps the producer epoch: Kafka aborts the first one's open
  transaction and refuses every later write of it (`Fenced`: it logs why and exits 1). The
  second reads the committed progress only after that, so it resumes at exactly the next row:
  nothing is written twice and nothing is skipped; the takeover is loud, never silent.
- A restarted streamer does the same with its own previous incarnation.

Transactions commit when `max_pending_points` points are open, on `flush`, and from the
`producer-txn` loop once the open one is `TXN_INTERVAL_S` old — or, when commits get slow
(a loaded machine, a broker failover), twice as old as the last commit took, up to
`TXN_MAX_INTERVAL_S`: nothing can be produced while a commit runs, so a fixed short interval
would let commits eat the producer's time; this bounds them to about a third of it.

A commit that fails in a way Kafka calls abortable (e.g. a broker failover) aborts and
produces the same batches again in a new transaction; a retriable one is retried; a fatal
one (fencing) fails this and every later call.

**A stuck Kafka client never hangs the streamer silently.** librdkafka 2.16 can leave
`send_offsets_to_transaction` waiting past its timeout, for good, when the group's coordinator
was on a broker that left the cluster (librdkafka issues 5456 and 5511, fixes not released:
it waits for that broker to change state, and a broker gone from the metadata never does).
No other call can be made beside it, and `_cond` is held across it. So the
`producer-watchdog` loop hands a transactional call still running `WEDGED_GRACE_S` past its
own timeout to `on_wedged`; the streamer's default logs it and exits with `WEDGED_EXIT`, its
supervisor restarts it, and the new process fences this one and resumes at the committed
progress: what was acknowledged is kept, what was not is sent again.

Thread-safety: every method may be called from any thread; `_cond` guards all state and is
held across librdkafka's transactional calls (they must not interleave). `on_ack` is called
with `_cond` held, once per batch after its transaction committed: it must not call back in.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from gputel.transport.base import AckCallback, Assignment
from gputel.transport.kafka_common import (
    COUNT_HEADER,
    PRODUCER,
    client_config,
    list_topic,
)
from gputel.transport.kafka_errors import from_kafka
from walbroker.client import Backoff
from walbroker.errors import BrokerError, Fenced, NotFound
from walbroker.loops import LoopCrashed, run_loop

log = logging.getLogger(__name__)

TXN_INTERVAL_S = 0.1  # an open transaction commits this long after it began (at the least)
TXN_MAX_INTERVAL_S = 1.0  # ... and at the most, however slow commits are
KAFKA_TIMEOUT_S = 30.0  # one transactional call (init, send offsets, commit, abort)
WEDGED_GRACE_S = 15.0  # a transactional call running this long past its timeout is stuck
WEDGED_EXIT = 3  # the streamer's exit code when its Kafka client is stuck
WATCH_TICK_S = 1.0
# librdkafka refuses a message over `message.max.bytes` (default 1,000,000) before it is
# sent; this much of it is left for the record and batch framing around the payload.
KAFKA_FRAMING_BYTES = 1024


def exit_wedged(reason: str) -> None:
    """Log why the Kafka client is stuck and end the process (see the module doc)."""
    log.critical(
        "Kafka client stuck; exiting so that a restart takes over", extra={"reason": reason}
    )
    logging.shutdown()
    os._exit(WEDGED_EXIT)


def transactional_id(group: str, topic: str) -> str:
    """The id every streamer of one job shares, so that Kafka fences all but the newest."""
    return f"gputel-streamer.{group}.{topic}"


@dataclass(slots=True)
class _Batch:
    partition: int
    payload: bytes
    count: int
    created: float


@dataclass(slots=True)
class _Txn:
    """The open transaction: its batches in order and the progress they bring each partition."""

    since: float = field(default_factory=time.monotonic)
    batches: list[_Batch] = field(default_factory=list)
    progress: dict[int, int] = field(default_factory=dict)
    points: int = 0
    aborted: bool = False  # aborted, and no new transaction begun yet
    redo: bool = False  # must be aborted and produced again before it may commit


class KafkaStreamProducer:
    """Publishes encoded batches to explicit partitions in transactions carrying the progress."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        properties: Mapping[str, str],
        on_ack: AckCallback,
        *,
        max_pending_points: int = 200_000,
        client_id: str = "gputel-streamer",
        on_wedged: Callable[[str], None] = exit_wedged,
        wedged_grace_s: float = WEDGED_GRACE_S,
    ) -> None:
        self.topic, self.group, self.bootstrap = topic, group, bootstrap
        self.transactional_id = transactional_id(group, topic)
        self.on_ack = on_ack
        self.max_pending = max_pending_points
        self.max_batch_bytes = (
            int(properties.get("message.max.bytes", 1_000_000)) - KAFKA_FRAMING_BYTES
        )
        self.on_wedged, self.wedged_grace_s = on_wedged, wedged_grace_s
        self._producer = Producer(
            client_config(
                bootstrap, properties,
                {**PRODUCER, "transactional.id": self.transactional_id, "client.id": client_id,
                 "error_cb": self._on_error},
            )
        )  # fmt: skip
        # Only to name the group in transactions and read its progress: it never subscribes.
        self._group = Consumer(
            client_config(
                bootstrap, properties,
                {"group.id": group, "enable.auto.commit": "false", "client.id": client_id,
                 "isolation.level": "read_committed"},
            )
        )  # fmt: skip
        self.partitions = 0
        self.assignment: Assignment | None = None
        self._cond = threading.Condition()
        self._txn: _Txn | None = None
        self._progress: dict[int, int] = {}  # tracked partitions: rows produced so far
        self._committed: dict[int, int] = {}  # rows of each partition in committed transactions
        self._failure: BrokerError | LoopCrashed | None = None
        self._interval_s = TXN_INTERVAL_S  # adapted to how long commits take (module doc)
        self._initialised = False  # init_transactions done (it fenced older instances)
        self._fatal: KafkaError | None = None  # the first fatal error librdkafka reported
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._call: tuple[str, float, float] | None = None  # running call: name, timeout, give-up
        self._watchdog: threading.Thread | None = None

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> KafkaStreamProducer:
        """Fence older instances, learn the partitions and their progress, start the loop.

        BrokerError when Kafka does not answer in `timeout_s` (the caller retries: a second
        call goes on where this one stopped) or the topic does not exist (NotFound, after
        waiting `timeout_s` for it: topics are created by an admin, never by the streamer).
        """
        deadline = time.monotonic() + timeout_s
        if self._watchdog is None:
            self._watchdog = threading.Thread(
                target=run_loop, args=("producer-watchdog", self._watch, self._crashed),
                kwargs={"transactional_id": self.transactional_id}, name="producer-watchdog",
                daemon=True,
            )  # fmt: skip
            self._watchdog.start()
        if not self._initialised:
            try:
                self._txn_call("init_transactions", deadline, self._producer.init_transactions)
            except KafkaException as exc:
                raise from_kafka(exc) from None
            self._initialised = True
        while True:
            try:
                left = max(0.1, deadline - time.monotonic())
                self.partitions = list_topic(self._producer, self.topic, self.bootstrap, left)
                break
            except NotFound:
                if time.monotonic() + 0.5 > deadline:
                    raise
                time.sleep(0.5)
        found = self._read_progress(deadline)
        self._committed = {tp.partition: max(tp.offset, 0) for tp in found}
        self.assignment = Assignment(
            1, self.transactional_id, dict(self._committed), frozenset(), self.partitions,
            dict.fromkeys(self._committed, 0),
        )  # fmt: skip
        log.info(
            "transactions initialised; older streamers of this job are fenced",
            extra={"transactional_id": self.transactional_id, "partitions": self.partitions},
        )
        self._thread = threading.Thread(
            target=run_loop, args=("producer-txn", self._loop, self._crashed),
            kwargs={"transactional_id": self.transactional_id}, name="producer-txn", daemon=True,
        )  # fmt: skip
        self._thread.start()
        return self

    def _read_progress(self, deadline: float) -> list[TopicPartition]:
        """The group's committed progress per partition, retrying while its coordinator moves."""
        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        backoff = Backoff(initial_ms=100, max_ms=1_000)
        while True:
            try:
                left = max(0.1, deadline - time.monotonic())
                return self._group.committed(tps, timeout=left)
            except KafkaException as exc:
                error = from_kafka(exc)
                if not error.retriable or time.monotonic() > deadline:
                    raise error from None
            time.sleep(backoff.next_s())

    def close(self, timeout_s: float = 30.0) -> None:
        """Commit what is open (up to `timeout_s`), then stop the loop and the clients."""
        try:
            self.flush(timeout_s)
        finally:
            self._stop.set()
            for thread in (self._thread, self._watchdog):
                if thread is not None:
                    thread.join(timeout=5)
            self._group.close()

    def _crashed(self, crash: LoopCrashed) -> None:
        with self._cond:
            self._failure = crash
            self._cond.notify_all()

    def _loop(self) -> None:
        """Commit the open transaction once it is `TXN_INTERVAL_S` old."""
        while not self._stop.wait(TXN_INTERVAL_S / 2):
            with self._cond:
                txn = self._txn
                if txn is None or self._failure is not None:
                    continue
                if time.monotonic() - txn.since >= self._interval_s:
                    try:
                        self._commit(time.monotonic() + KAFKA_TIMEOUT_S)
                    except (TimeoutError, BrokerError) as exc:
                        if self._failure is not None:
                            return  # fenced: logged once, and every later call raises it
                        log.warning("transaction not committed yet", extra={"reason": str(exc)})

    def _watch(self) -> None:
        """Hand a transactional call stuck past its timeout to `on_wedged` (module doc)."""
        while not self._stop.wait(WATCH_TICK_S):
            call = self._call
            if call is not None and time.monotonic() > call[2]:
                name, timeout_s, _ = call
                self.on_wedged(
                    f"librdkafka's {name} has not returned {self.wedged_grace_s:.0f} s after its "
                    f"{timeout_s:.0f} s timeout (transactional id {self.transactional_id!r}); "
                    "a known librdkafka defect after a broker left the cluster"
                )
                return

    def _txn_call(
        self, name: str, deadline: float, call: Callable[..., object], *args: object
    ) -> None:
        """`call(*args, timeout)` with the time left until `deadline` (at least 0.1 s),
        watched by the `producer-watchdog` loop."""
        timeout_s = max(0.1, deadline - time.monotonic())
        self._call = (name, timeout_s, time.monotonic() + timeout_s + self.wedged_grace_s)
        try:
            call(*args, timeout_s)
        finally:
            self._call = None

    # ---- the streamer's side -----------------------------------------------------------------

    @property
    def failure(self) -> BrokerError | LoopCrashed | None:
        """Why this producer stopped for good (fenced by a newer streamer), or None."""
        return self._failure

    @property
    def pending_points(self) -> int:
        """Points produced in the open transaction (not yet committed)."""
        txn = self._txn
        return 0 if txn is None else txn.points

    def committed_progress(self) -> dict[int, int]:
        """Rows of each partition stored by committed transactions."""
        with self._cond:
            return dict(self._committed)

    def track(self, partition: int, group: str, epoch: int, progress: int) -> None:
        """Produce `partition` from `progress` rows on; its transactions store the progress."""
        with self._cond:
            self._progress[partition] = progress

    def untrack(self, partition: int) -> None:
        """Stop producing `partition`."""
        with self._cond:
            self._progress.pop(partition, None)

    def send_batch(
        self, partition: int, payload: bytes, count: int, timeout_s: float | None = None
    ) -> None:
        """Produce one encoded batch of `count` points in the open transaction."""
        with self._cond:
            self._raise_failure()
            if partition not in self._progress:
                raise Fenced(f"partition {partition} is not tracked by this streamer")
            if self._txn is None:
                self._begin()
            txn = self._txn
            assert txn is not None
            batch = _Batch(partition, payload, count, time.monotonic())
            self._produce(batch)
            txn.batches.append(batch)
            txn.points += count
            self._progress[partition] += count
            txn.progress[partition] = self._progress[partition]
            if txn.points >= self.max_pending:
                deadline = time.monotonic() + (KAFKA_TIMEOUT_S if timeout_s is None else timeout_s)
                self._commit(deadline)

    def flush(self, timeout_s: float | None = None) -> None:
        """Commit the open transaction; TimeoutError if Kafka did not confirm in time."""
        with self._cond:
            self._raise_failure()
            if self._txn is not None:
                self._commit(
                    time.monotonic() + (KAFKA_TIMEOUT_S if timeout_s is None else timeout_s)
                )

    # ---- transactions (with `_cond` held) ------------------------------------------------------

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _begin(self) -> None:
        try:
            self._producer.begin_transaction()
        except KafkaException as exc:
            raise self._fatal_or(exc) from None
        self._txn = _Txn()

    def _produce(self, batch: _Batch) -> None:
        while True:
            try:
                self._producer.produce(
                    self.topic, batch.payload, partition=batch.partition,
                    headers={COUNT_HEADER: str(batch.count)},
                )  # fmt: skip
                return
            except BufferError:  # librdkafka's queue is full: serve deliveries, then retry
                self._producer.poll(0.05)
            except KafkaException as exc:
                raise self._fatal_or(exc) from None

    def _commit(self, deadline: float) -> None:
        """Commit the open transaction (offsets included), retrying until `deadline`."""
        txn = self._txn
        assert txn is not None
        backoff = Backoff(initial_ms=100, max_ms=2_000)
        started = time.monotonic()
        while True:
            try:
                if txn.redo:
                    self._redo(txn, deadline)
                self._try_commit(txn, deadline)
                break
            except KafkaException as exc:
                err = exc.args[0]
                if err.fatal():
                    raise self._fatal_or(exc) from None
                txn.redo = txn.redo or err.txn_requires_abort()
                log.warning(
                    "transaction commit failed; retrying",
                    extra={"reason": err.str(), "abort": txn.redo, "points": txn.points},
                )
            if time.monotonic() + 0.1 > deadline:
                raise TimeoutError(f"transaction of {txn.points} points not committed in time")
            time.sleep(min(backoff.next_s(), max(0.0, deadline - time.monotonic())))
        self._txn = None
        took = time.monotonic() - started
        self._interval_s = max(TXN_INTERVAL_S, min(TXN_MAX_INTERVAL_S, 2 * took))
        self._committed.update(txn.progress)
        for b in txn.batches:
            self.on_ack(b.partition, b.count, b.created)

    def _try_commit(self, txn: _Txn, deadline: float) -> None:
        offsets = [TopicPartition(self.topic, p, n) for p, n in sorted(txn.progress.items())]
        metadata = self._group.consumer_group_metadata()
        send = self._producer.send_offsets_to_transaction
        self._txn_call("send_offsets_to_transaction", deadline, send, offsets, metadata)
        self._txn_call("commit_transaction", deadline, self._producer.commit_transaction)

    def _redo(self, txn: _Txn, deadline: float) -> None:
        """Abort the transaction (once) and produce its batches again in a new one.

        Aborted batches are never seen by read_committed consumers, so the new transaction
        writes each of them exactly once in effect.
        """
        if not txn.aborted:
            self._txn_call("abort_transaction", deadline, self._producer.abort_transaction)
            txn.aborted = True
        self._producer.begin_transaction()
        txn.aborted = False
        txn.since = time.monotonic()
        for b in txn.batches:
            self._produce(b)
        txn.redo = False  # only now: a commit never covers part of the batches

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's error callback (during poll): keep the first fatal error's real code."""
        if err.fatal() and self._fatal is None:
            self._fatal = err

    def _fatal_or(self, exc: KafkaException) -> BrokerError:
        """The error of `exc`; a fatal one (fencing) fails every later call too.

        After a fatal error librdkafka answers every call with a generic `_FATAL`; the error
        callback (served by `poll`, which may raise it instead) tells which one it was, e.g.
        `_FENCED`.
        """
        err = exc.args[0]
        if isinstance(err, KafkaError) and err.code() == KafkaError._FATAL:
            if isinstance(self._failure, BrokerError):  # named already (its callback may not come)
                return self._failure
            try:
                self._producer.poll(0)  # serves the error callback, or raises the fatal error
                err = self._fatal or err
            except KafkaException as fatal:
                err = fatal.args[0]
        error = from_kafka(err)
        if isinstance(err, KafkaError) and err.fatal():
            self._fatal = self._fatal or err
            if isinstance(error, Fenced):
                error = Fenced(
                    f"another streamer took over transactional id {self.transactional_id!r} "
                    "(same --group and --topic): this one stops; run one streamer per job"
                )
            log.error("producer stopped for good", extra={"reason": error.message})
            self._failure = error
        return error


class KafkaStreamMember:
    """The streamer's membership on Kafka: it owns every partition, from the committed progress.

    There is no producer group to join: ownership comes from the transactional id (see the
    module docstring), so this member's assignment is the producer's once it started.
    """

    def __init__(self, producer: KafkaStreamProducer) -> None:
        self._producer = producer

    @property
    def assignment(self) -> Assignment | None:
        """Every partition, at its committed progress (None before the producer started)."""
        return self._producer.assignment

    @property
    def failure(self) -> BrokerError | LoopCrashed | None:
        """The producer's fatal failure (fenced by a newer streamer), or None."""
        return self._producer.failure

    def start(self) -> KafkaStreamMember:
        """Nothing to join."""
        return self

    def close(self) -> None:
        """Nothing to leave."""

    def commit(self, offsets: dict[int, int] | None = None, timeout_s: float = 10.0) -> bool:
        """Progress is committed inside the producer's transactions: nothing to do here."""
        return True

    def release(self, partitions: set[int]) -> None:
        """Partitions never move on Kafka: nothing to release."""

    def progress(self) -> dict[int, int]:
        """The committed progress of every partition (this streamer is the only one)."""
        return self._producer.committed_progress()

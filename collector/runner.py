"""The collector loop: poll, decode, hold, write to the store, then commit (persist, then commit).

Offsets are committed only after the store acknowledged every point below them, so a
crash at any moment loses nothing: uncommitted records are redelivered and rewritten,
and stores treat the same (uuid, metric, time_ns) twice as one point. No duplicates.

Two threads share the work (`collector.writer`): the loop thread polls, decodes and holds
records, and at a flush prepares them (merge, validate, encode: `Store.prepare`); the
`collector-writer` thread writes the prepared batch, makes sure its dead letters are on
the broker and commits its offsets. One batch is in the writer at a time, and the next is
handed over only once it is committed, so commits stay in offset order and each follows
its write. While the writer stores batch N the loop goes on polling and decoding; when N
is committed, everything held since becomes batch N+1.

- A flush is due when `batch_size` points are held or the oldest held record is
  `flush_ms` old, and happens as soon as the writer is free. A writer slower than the
  arrivals thus gets bigger batches (fewer transactions and commits for the same points:
  on SQLite a commit and its fsync are a large share of a small write) instead of a loop
  that waits with a full batch and stops taking records. At `max_batch_points` held the
  loop waits for the writer, which bounds the memory held to about twice that (the batch
  in the writer and the one held; the consumer's credit, `max_unacked_points`, bounds
  both together too).
- A failed write comes back to the loop, which retries it with exponential backoff and
  jitter; the loop does not poll meanwhile, so it stops returning credit and the broker
  stops delivering. What is held behind it waits. After `failures_before_unready`
  consecutive failures the collector reports not-ready.
- A record that does not decode, or that the store rejects as invalid, goes to the
  dead-letter topic (`deadletter`), is counted and logged once, and its offset is
  committed with the flush: it never blocks its partition. So does a record holding
  points stamped more than `max_future_skew_s` ahead of the clock (`collector.future`);
  its other points are written.
- Revoked partitions (cooperative rebalance) are flushed, committed (waiting for the
  broker's acknowledgement) and released; if the store is down their held records are
  dropped uncommitted instead (the new owner re-reads them) so a rebalance never waits
  for the store.
- `stop()` (SIGTERM) ends polling; `run` finishes the write in flight, flushes what is
  held (retrying up to `shutdown_timeout_s`), waits for the commits, and leaves the group.

Thread-safety: `run` executes on the loop thread, which owns the held records, the retry
policy, readiness (`_store_ok`, `_failures`: written only here) and rebalances; the writer
thread owns a job only while it is WRITING (`collector.writer`). Both threads send dead
letters (`DeadLetters` is thread-safe) and update metrics; `_sent` is guarded by its lock.
`stop`, `readiness` (reads only) and the consumer's revoke callback (on the consumer-io
thread: it only notes the partitions, under `_revoked_lock`) may run on any thread.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from collector.config import CollectorConfig
from collector.deadletter import DeadLetters
from collector.future import split_future
from collector.metrics import CollectorMetrics
from collector.pending import HeldRecord, Pending, merge, tail
from collector.writer import FlushFailed, JobState, WriteJob, Writer
from gputel.transport import factory
from gputel.transport.base import GroupConsumer, Record
from proto import codec
from store import InvalidBatch, Store, StoreError, StoreUnavailable
from walbroker.client import Backoff
from walbroker.errors import BrokerError, NotFound

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.2
BUSY_WRITER_POLL_S = 0.005
DEAD_LETTER_TIMEOUT_S = 10.0
# A submitted job the loop has not yet seen back from the writer (see `_settle`).
_UNSETTLED = frozenset({JobState.WRITING, JobState.COMMITTED, JobState.FAILED})


class Collector:
    """One member of the collectors' consumer group, writing into one store."""

    def __init__(
        self,
        config: CollectorConfig,
        store: Store,
        metrics: CollectorMetrics,
        consumer: GroupConsumer | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        transport = config.transport()
        self.consumer: GroupConsumer = consumer or factory.group_consumer(
            transport,
            config.group,
            config.topic,
            client_id=config.client_id,
            max_unacked_points=config.max_unacked_points,
            session_timeout_ms=config.session_timeout_ms,
            on_revoke=self._on_revoke,
        )
        self.dead_letters = DeadLetters(
            lambda: factory.record_producer(transport, config.dead_letter_topic),
            config.dead_letter_topic,
        )
        metrics.watch_lag(config.topic, self.consumer.lag)
        self.pending = Pending()
        self._flush_s = config.flush_ms / 1000
        self._backoff = Backoff(initial_ms=config.retry_initial_ms, max_ms=config.retry_max_ms)
        self._failures = 0
        self._store_ok = True
        self._stop = threading.Event()
        self._stop_at = 0.0
        self._revoked: set[int] = set()
        self._revoked_lock = threading.Lock()
        self._writer = Writer(self._execute, config.group)
        self._inflight: WriteJob | None = None  # handed to the writer, not yet committed
        # Offsets committed without waiting since the last waited-for commit, so that the
        # next waited-for commit (before a release or leaving) covers them too.
        self._sent: dict[int, int] = {}
        self._sent_lock = threading.Lock()

    # ---- any thread --------------------------------------------------------------------

    def stop(self) -> None:
        """Ask `run` to flush, commit, leave and return (safe from a signal handler)."""
        if not self._stop.is_set():
            self._stop_at = time.monotonic()
            self._stop.set()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready while the store accepts writes and the broker has the topic.

        The broker lacking the topic (or the group) is its last answer being NOT_FOUND while
        no assignment came: the collector consumes nothing until someone creates it (it keeps
        asking, and logs a warning naming the fix). The detail goes into the /readyz body.
        """
        assigned = self.consumer.assignment is not None
        missing = not assigned and isinstance(self.consumer.last_error, NotFound)
        return self._store_ok and not missing, {
            "store_up": self._store_ok,
            "consecutive_failures": self._failures,
            "assigned": assigned,
            "topic_missing": missing,
        }

    def _on_revoke(self, partitions: set[int]) -> None:
        # On the consumer-io thread: must not block, so only note it for the loop.
        with self._revoked_lock:
            self._revoked |= partitions

    # ---- the loop ----------------------------------------------------------------------

    def run(self) -> bool:
        """Collect until `stop()`; True when everything received was stored and committed."""
        self._check_store()
        self.consumer.start()
        self._writer.start()
        log.info("loop started", extra={"loop": "collector", "group": self.config.group})
        try:
            while not self._stop.is_set():
                self._step()
            done = self._flush(wait=True)
            if not done:
                log.warning(
                    "leaving with points not stored; they stay uncommitted and are redelivered",
                    extra={"points": self._held_points(), "records": self._held_records()},
                )
            return done
        finally:
            self._writer.stop(self.config.shutdown_timeout_s)
            self.dead_letters.close()
            self.consumer.close()
            log.info("loop stopped", extra={"loop": "collector", "group": self.config.group})

    def _step(self) -> None:
        self._handle_revoke(can_flush=True)
        inflight = self._inflight
        if inflight is not None and inflight.done.is_set() and not self._finish_inflight():
            return  # stopping gave up on a failing store
        if not self._store_ok and not self._holds_anything():
            self._check_store()  # not ready and idle: probe instead of taking more records
            if not self._store_ok:
                self._stop.wait(self._backoff.next_s())
            return
        if self._flush_now():
            self._flush()
            return
        for msg in self.consumer.poll(self._poll_timeout_s(), max_messages=64):
            self._accept(msg)
            if self._flush_now():
                self._flush()

    def _writer_busy(self) -> bool:
        return self._inflight is not None and not self._inflight.done.is_set()

    def _flush_now(self) -> bool:
        """Flush when the held records are due and the writer is free, or when they are too many.

        Due: `batch_size` points, or the oldest `flush_ms` old. While the writer is busy the
        loop keeps polling and decoding, so the next write takes everything held since (one
        transaction and one commit for all of it) instead of waiting with a full batch; at
        `max_batch_points` it waits for the writer (`_flush`), which stops the polling.
        """
        held = self.pending.points
        if held >= self.config.max_batch_points:
            return True
        due = held >= self.config.batch_size or (
            len(self.pending) > 0 and self.pending.age_s() >= self._flush_s
        )
        return due and not self._writer_busy()

    def _poll_timeout_s(self) -> float:
        if not len(self.pending):
            return IDLE_POLL_S
        left_s = self._flush_s - self.pending.age_s()
        if left_s <= 0 or self.pending.points >= self.config.batch_size:
            # Due, waiting only for the writer: look again soon (its job ends a write, so a
            # few ms of delay are a small share; polling goes on meanwhile).
            return BUSY_WRITER_POLL_S
        return min(IDLE_POLL_S, left_s)

    def _check_store(self) -> None:
        try:
            self.store.ping()
        except StoreError as exc:
            if self._store_ok:
                log.warning("store does not answer; not ready", extra={"error": str(exc)})
            self._set_store_ok(False)
        else:
            if not self._store_ok:
                log.info("store answers again; ready")
            self._set_store_ok(True)

    def _set_store_ok(self, ok: bool) -> None:
        self._store_ok = ok
        self.metrics.store_up.set(1 if ok else 0)
        if ok:
            self._failures = 0
            self._backoff.reset()

    def _jobs(self) -> list[WriteJob]:
        return [] if self._inflight is None else [self._inflight]

    def _holds_anything(self) -> bool:
        return bool(len(self.pending) or self._jobs())

    def _held_points(self) -> int:
        return self.pending.points + sum(j.points for j in self._jobs() if not j.stored)

    def _held_records(self) -> int:
        return len(self.pending) + sum(len(j.held) for j in self._jobs())

    def _update_backlog(self) -> None:
        self.metrics.backlog.set(self._held_points())

    # ---- records in ----------------------------------------------------------------------

    def _accept(self, msg: Record) -> None:
        self.metrics.received.inc(msg.count - msg.skip)
        try:
            batch = codec.decode(msg.payload, labels=False)  # no store keeps labels
            if len(batch) != msg.count:
                raise codec.CodecError(f"record of {msg.count} points holds {len(batch)}")
        except codec.CodecError as exc:
            self._dead_letter(msg, "decode", str(exc))
            self.pending.add(HeldRecord(msg, None))
            return
        split = split_future(tail(batch, msg.skip), self.config.max_future_skew_s)
        if split.future:
            self._dead_letter(msg, "future_time", split.reason(), points=split.future)
        self.pending.add(HeldRecord(msg, split.kept))
        self._update_backlog()

    def _dead_letter(self, msg: Record, reason: str, error: str, points: int = -1) -> None:
        """Send `msg` to the dead-letter topic (from the loop or the writer thread).

        `points` counts what is not stored (default: the whole record).
        """
        self.dead_letters.send(msg, reason, error)
        dropped = msg.count - msg.skip if points < 0 else points
        self.metrics.dead_lettered.labels(reason=reason).inc(dropped)
        log.warning(
            "record sent to the dead-letter topic",
            extra={
                "topic": msg.topic,
                "partition": msg.partition,
                "offset": msg.base_offset,
                "count": msg.count,
                "reason": reason,
                "error": error,
                "dead_letter_topic": self.dead_letters.topic,
            },
        )

    # ---- flush: prepare here, write and commit on the writer thread -------------------------

    def _flush(self, wait: bool = False) -> bool:
        """Once the writer's job is committed, prepare everything held and hand it over.

        Returns False if stopping gave up on a failing store (what is held stays held,
        uncommitted). With `wait` (before a release or leaving the group) it also waits until
        this batch is written and the broker stored its commit and every earlier one;
        otherwise polling goes on meanwhile.
        """
        if not self._finish_inflight():
            return False
        job = WriteJob(self.pending, wait=wait)
        if not len(job.held) and not (wait and self._has_sent()):
            self._update_backlog()
            return True
        self.pending = Pending()
        self._prepare(job)
        job.started = time.monotonic()
        self._inflight = job
        self._writer.submit(job)
        return self._finish_inflight() if wait else True

    def _prepare(self, job: WriteJob) -> None:
        """Merge and encode the job's points (`Store.prepare`); mark it invalid if rejected."""
        job.prepared, job.one_by_one = None, False
        batches = job.held.batches()
        if batches:
            try:
                job.prepared = self.store.prepare(merge(batches), batches)
            except InvalidBatch:
                job.one_by_one = True
        job.to(JobState.PREPARED)

    def _finish_inflight(self) -> bool:
        """Wait until the writer's job is committed, retrying it with backoff while it fails.

        Returns False once stopping has run out of time for a failing store (the job stays
        uncommitted); re-raises what is not a store, dead-letter or commit failure (a bug).
        """
        while (job := self._inflight) is not None:
            if job.state in _UNSETTLED and self._settle(job):
                self._inflight = None
                break
            if not self._wait_retry():
                return False
            self._handle_revoke(can_flush=False)
            if not len(job.held) and not job.wait:
                self._inflight = None
                break
            if job.state is JobState.HELD:  # records were dropped: prepare what is left
                self._prepare(job)
            self._writer.submit(job)
        self._update_backlog()
        return True

    def _settle(self, job: WriteJob) -> bool:
        """Wait until the writer hands `job` back; True when committed.

        A failure is counted (the job is then RETRYING); a crash of the writer is re-raised.
        """
        job.done.wait()
        if job.state is JobState.COMMITTED:
            if len(job.held):  # not for a commit-only job (confirming earlier commits)
                if not self._store_ok or self._failures:
                    extra = {"failed_attempts": self._failures}
                    log.info("store writes succeed again", extra=extra)
                self._set_store_ok(True)
            return True
        if not isinstance(job.error, FlushFailed):
            assert job.error is not None
            raise job.error  # LoopCrashed: the writer logged it and stopped
        self._on_failure(job.error)
        job.to(JobState.RETRYING)
        return False

    def _on_failure(self, exc: FlushFailed) -> None:
        self._failures += 1
        self.metrics.write_errors.labels(kind=exc.kind).inc()
        extra = {
            "loop": Writer.NAME,
            "kind": exc.kind,
            "error": str(exc.error),
            "attempt": self._failures,
        }
        if self._failures == 1:
            log.warning("flush failed; retrying with backoff", extra=extra)
        if self._failures == self.config.failures_before_unready:
            log.error("flush keeps failing; not ready, polling stopped", extra=extra)
            self._store_ok = False
            self.metrics.store_up.set(0)

    def _wait_retry(self) -> bool:
        """Sleep before the next attempt; False once stopping has run out of time."""
        delay = self._backoff.next_s()
        if not self._stop.is_set():
            self._stop.wait(delay)
            return True
        left = self._stop_at + self.config.shutdown_timeout_s - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(delay, left))
        return True

    # ---- the writer thread -----------------------------------------------------------------

    def _execute(self, job: WriteJob) -> None:
        """On the writer thread: store the job's points, flush dead letters, then commit."""
        if not job.stored:
            try:
                if job.prepared is not None:
                    try:
                        self.store.write_prepared(job.prepared)
                    except InvalidBatch:  # a store that only validates while writing
                        job.prepared, job.one_by_one = None, True
                if job.one_by_one:
                    self._write_one_by_one(job)
            except StoreUnavailable as exc:
                raise FlushFailed("unavailable", exc) from exc
            except StoreError as exc:
                raise FlushFailed("error", exc) from exc
            job.stored = True
        self._flush_dead_letters()
        self._commit(job)
        if len(job.held):
            self.metrics.flushed.inc(job.points)
            self.metrics.flush_latency.observe(time.monotonic() - job.started)

    def _write_one_by_one(self, job: WriteJob) -> None:
        """Find the records the store rejects: dead-letter them, write the others.

        Other store errors propagate to `_execute`, which turns them into a FlushFailed.
        """
        for record in list(job.held.records):
            if record.batch is None:
                continue
            try:
                self.store.write(record.batch)
            except InvalidBatch as exc:
                self.metrics.write_errors.labels(kind="invalid").inc()
                self._dead_letter(record.message, "invalid", str(exc))
                job.held.mark_dead(record)

    def _flush_dead_letters(self) -> None:
        """Make sure every dead letter sent so far is on the broker before a commit."""
        try:
            self.dead_letters.flush(DEAD_LETTER_TIMEOUT_S)
        except (BrokerError, TimeoutError) as exc:
            if isinstance(exc, BrokerError) and not exc.retriable:
                log.error("dead letter refused by the broker", extra={"error": str(exc)})
                self.metrics.write_errors.labels(kind="dead_letter").inc()
                return
            raise FlushFailed("dead_letter", exc) from exc

    def _commit(self, job: WriteJob) -> None:
        """Commit offsets of partitions still owned (and return credit for what was polled)."""
        offsets = job.held.offsets()
        with self._sent_lock:
            merged = _highest(self._sent, offsets)
            if job.wait:
                offsets, self._sent = merged, {}
            else:
                self._sent = merged
        if not offsets:
            return
        owned = set(self.consumer.positions())
        mine = {p: o for p, o in offsets.items() if p in owned}
        if self.consumer.commit(mine, wait=job.wait):
            self.metrics.commits.labels(result="ok" if job.wait else "sent").inc()
            return
        self.metrics.commits.labels(result="refused").inc()
        log.info(
            "commit refused; the stored records will be redelivered and rewritten",
            extra={"offsets": mine, "error": str(self.consumer.last_error)},
        )

    def _has_sent(self) -> bool:
        with self._sent_lock:
            return bool(self._sent)

    # ---- rebalance -------------------------------------------------------------------------

    def _handle_revoke(self, can_flush: bool) -> None:
        """Flush (or, with the store down, drop) revoked partitions' records, then release."""
        with self._revoked_lock:
            revoked, self._revoked = self._revoked, set()
        if not revoked:
            return
        held = {r.partition for r in self.pending.records}
        for job in self._jobs():
            held |= job.partitions()
        if held & revoked and can_flush and self._store_ok:
            self._flush(wait=True)
        elif (
            self._inflight is not None
            and self._inflight.state in _UNSETTLED  # the writer holds it, or just gave it back
            and self._settle(self._inflight)  # never change a job before its attempt ended
        ):
            self._inflight = None
        dropped = self.pending.drop(revoked)
        for job in self._jobs():
            dropped += job.drop(revoked)
        with self._sent_lock:  # a partition owned again later must not get these back
            for p in revoked:
                self._sent.pop(p, None)
        self._update_backlog()
        self.consumer.release(revoked)
        log.info(
            "revoked partitions released",
            extra={"partitions": sorted(revoked), "dropped_points": dropped},
        )


def _highest(a: dict[int, int], b: dict[int, int]) -> dict[int, int]:
    """Per partition, the higher of two offset maps."""
    out = dict(a)
    for p, o in b.items():
        out[p] = max(out.get(p, 0), o)
    return out

"""The collector loop: poll, decode, hold, write to the store, then commit (persist, then commit).

Offsets are committed only after the store acknowledged every point below them, so a
crash at any moment loses nothing: uncommitted records are redelivered and rewritten,
and stores treat the same (uuid, metric, time_ns) twice as one point. No duplicates.

- A flush happens when `batch_size` points are held or the oldest held record is
  `flush_ms` old. A failed write is retried with exponential backoff and jitter; the loop
  does not poll meanwhile, so it stops returning credit and the broker stops delivering.
  After `failures_before_unready` consecutive failures the collector reports not-ready.
- A record that does not decode, or that the store rejects as invalid, goes to the
  dead-letter topic (`deadletter`), is counted and logged once, and its offset is
  committed with the flush: it never blocks its partition.
- Revoked partitions (cooperative rebalance) are flushed, committed and released; if the
  store is down their held records are dropped uncommitted instead (the new owner re-reads
  them) so a rebalance never waits for the store.
- `stop()` (SIGTERM) ends polling; `run` flushes what is held (retrying up to
  `shutdown_timeout_s`), commits, and leaves the group.

Thread-safety: `run` executes on one thread, which owns the held records and the store
writes; `stop`, `readiness` and the consumer's revoke callback may run on any thread.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from collector.config import CollectorConfig
from collector.deadletter import DeadLetters
from collector.metrics import CollectorMetrics
from collector.pending import HeldRecord, Pending, merge, tail
from proto import codec
from store import InvalidBatch, Store, StoreError, StoreUnavailable
from walbroker.client import Backoff
from walbroker.consumer import Consumer, Message
from walbroker.errors import BrokerError

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.2
DEAD_LETTER_TIMEOUT_S = 10.0


class FlushFailed(Exception):
    """A flush step failed; `kind` labels the write-error metric."""

    def __init__(self, kind: str, error: Exception) -> None:
        super().__init__(f"{kind}: {error}")
        self.kind = kind
        self.error = error


class Collector:
    """One member of the collectors' consumer group, writing into one store."""

    def __init__(
        self,
        config: CollectorConfig,
        store: Store,
        metrics: CollectorMetrics,
        consumer: Consumer | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.consumer = consumer or Consumer(
            config.broker,
            config.group,
            config.topic,
            client_id=config.client_id,
            max_unacked_points=config.max_unacked_points,
            session_timeout_ms=config.session_timeout_ms,
            on_revoke=self._on_revoke,
        )
        self.dead_letters = DeadLetters(config.broker, config.dead_letter_topic)
        self.pending = Pending()
        self._flush_s = config.flush_ms / 1000
        self._backoff = Backoff(initial_ms=config.retry_initial_ms, max_ms=config.retry_max_ms)
        self._failures = 0
        self._store_ok = True
        self._stop = threading.Event()
        self._stop_at = 0.0
        self._revoked: set[int] = set()
        self._revoked_lock = threading.Lock()

    # ---- any thread --------------------------------------------------------------------

    def stop(self) -> None:
        """Ask `run` to flush, commit, leave and return (safe from a signal handler)."""
        if not self._stop.is_set():
            self._stop_at = time.monotonic()
            self._stop.set()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready while the store accepts writes; the detail goes into the /readyz body."""
        return self._store_ok, {
            "store_up": self._store_ok,
            "consecutive_failures": self._failures,
            "assigned": self.consumer.assignment is not None,
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
        log.info("loop started", extra={"loop": "collector", "group": self.config.group})
        try:
            while not self._stop.is_set():
                self._step()
            done = self._flush(wait=True) if len(self.pending) else True
            if not done:
                log.warning(
                    "leaving with points not stored; they stay uncommitted and are redelivered",
                    extra={"points": self.pending.points, "records": len(self.pending)},
                )
            return done
        finally:
            self.dead_letters.close()
            self.consumer.close()
            log.info("loop stopped", extra={"loop": "collector", "group": self.config.group})

    def _step(self) -> None:
        self._handle_revoke(can_flush=True)
        if not self._store_ok and not len(self.pending):
            self._check_store()  # not ready and idle: probe instead of taking more records
            if not self._store_ok:
                self._stop.wait(self._backoff.next_s())
            return
        if len(self.pending) and self.pending.age_s() >= self._flush_s:
            self._flush()
            return
        timeout_s = IDLE_POLL_S
        if len(self.pending):
            timeout_s = min(timeout_s, self._flush_s - self.pending.age_s())
        for msg in self.consumer.poll(max(timeout_s, 0.0), max_messages=64):
            self._accept(msg)
            if self.pending.points >= self.config.batch_size:
                self._flush()

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

    # ---- records in ----------------------------------------------------------------------

    def _accept(self, msg: Message) -> None:
        self.metrics.received.inc(msg.count - msg.skip)
        try:
            batch = codec.decode(msg.payload)
            if len(batch) != msg.count:
                raise codec.CodecError(f"record of {msg.count} points holds {len(batch)}")
        except codec.CodecError as exc:
            self._dead_letter(msg, "decode", str(exc))
            self.pending.add(HeldRecord(msg, None))
            return
        self.pending.add(HeldRecord(msg, tail(batch, msg.skip)))
        self.metrics.backlog.set(self.pending.points)

    def _dead_letter(self, msg: Message, reason: str, error: str) -> None:
        self.dead_letters.send(msg, reason, error)
        self.metrics.dead_lettered.labels(reason=reason).inc(msg.count - msg.skip)
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

    # ---- flush: write, then commit ---------------------------------------------------------

    def _flush(self, wait: bool = False) -> bool:
        """Write everything held, then commit it; False if stopping gave up on a failing store.

        The commit is only waited for when `wait` (before a release or leaving the group):
        otherwise polling goes on while the broker stores it.
        """
        start = time.monotonic()
        while True:
            try:
                self._write_held()
                break
            except FlushFailed as exc:
                self._on_failure(exc)
                if not self._wait_retry():
                    return False
                self._handle_revoke(can_flush=False)
                if not len(self.pending):
                    return True
        if not self._store_ok or self._failures:
            log.info("store writes succeed again", extra={"failed_attempts": self._failures})
        self._set_store_ok(True)
        self._commit(self.pending.offsets(), wait)
        self.metrics.flushed.inc(self.pending.points)
        self.metrics.flush_latency.observe(time.monotonic() - start)
        self.pending.clear()
        self.metrics.backlog.set(0)
        return True

    def _write_held(self) -> None:
        """Store every held batch and make sure dead letters are on the broker."""
        batches = self.pending.batches()
        try:
            if batches:
                self.store.write(merge(batches))
        except InvalidBatch:
            self._write_one_by_one()
        except StoreUnavailable as exc:
            raise FlushFailed("unavailable", exc) from exc
        except StoreError as exc:
            raise FlushFailed("error", exc) from exc
        try:
            self.dead_letters.flush(DEAD_LETTER_TIMEOUT_S)
        except (BrokerError, TimeoutError) as exc:
            if isinstance(exc, BrokerError) and not exc.retriable:
                log.error("dead letter refused by the broker", extra={"error": str(exc)})
                self.metrics.write_errors.labels(kind="dead_letter").inc()
                return
            raise FlushFailed("dead_letter", exc) from exc

    def _write_one_by_one(self) -> None:
        """Find the records the store rejects: dead-letter them, write the others."""
        for record in list(self.pending.records):
            if record.batch is None:
                continue
            try:
                self.store.write(record.batch)
            except InvalidBatch as exc:
                self.metrics.write_errors.labels(kind="invalid").inc()
                self._dead_letter(record.message, "invalid", str(exc))
                self.pending.mark_dead(record)

    def _on_failure(self, exc: FlushFailed) -> None:
        self._failures += 1
        self.metrics.write_errors.labels(kind=exc.kind).inc()
        extra = {"kind": exc.kind, "error": str(exc.error), "attempt": self._failures}
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

    def _commit(self, offsets: dict[int, int], wait: bool) -> None:
        """Commit offsets of partitions still owned (and return credit for what was polled)."""
        owned = set(self.consumer.positions())
        mine = {p: o for p, o in offsets.items() if p in owned}
        if self.consumer.commit(mine, wait=wait):
            self.metrics.commits.labels(result="ok" if wait else "sent").inc()
            return
        self.metrics.commits.labels(result="refused").inc()
        log.info(
            "commit refused; the stored records will be redelivered and rewritten",
            extra={"offsets": mine, "error": str(self.consumer.last_error)},
        )

    # ---- rebalance -------------------------------------------------------------------------

    def _handle_revoke(self, can_flush: bool) -> None:
        """Flush (or, with the store down, drop) revoked partitions' records, then release."""
        with self._revoked_lock:
            revoked, self._revoked = self._revoked, set()
        if not revoked:
            return
        held = {r.partition for r in self.pending.records} & revoked
        if held and can_flush and self._store_ok:
            self._flush(wait=True)
        dropped = self.pending.drop(revoked)
        self.metrics.backlog.set(self.pending.points)
        self.consumer.release(revoked)
        log.info(
            "revoked partitions released",
            extra={"partitions": sorted(revoked), "dropped_points": dropped},
        )

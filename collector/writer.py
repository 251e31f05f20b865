"""The collector's writer thread: writes one prepared batch at a time, then commits it.

A flush used to stop the collector loop for the whole store write, and the store (InfluxDB
on the same cores, or SQLite's transaction) sat idle while the loop polled and decoded. Now
the loop prepares batch N+1 (decode, merge, encode) while this thread writes batch N.

The order guarantee comes from handing over exactly one `WriteJob` at a time: the loop
submits a job only after the previous one succeeded (its write acknowledged, its dead
letters on the broker, its offsets committed). So every commit follows the write of every
point below it, and commits reach the broker in offset order. A failed job goes back to
the loop, which owns the retry policy, readiness and rebalances; the writer never retries
on its own and never holds more than the one job.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from collector.pending import Pending
from store.base import PreparedWrite

log = logging.getLogger(__name__)


@dataclass(eq=False)
class WriteJob:
    """One flush: held records to store, then their offsets to commit.

    Owned by the loop thread except between `Writer.submit` and `done` being set, when the
    writer thread owns it.
    """

    held: Pending
    # Wait for the broker to store the commit (before a release or leaving the group); such a
    # commit also covers every earlier commit that was only sent.
    wait: bool = False
    prepared: PreparedWrite | None = None  # None: no points to write (or one_by_one)
    one_by_one: bool = False  # the merged batch is invalid: write record by record
    stale: bool = False  # records were dropped after `prepared` was made: prepare again
    written: bool = False  # the store acknowledged the points; a retry only commits
    failed: bool = False  # the loop counted the last failure and will submit it again
    started: float = 0.0  # monotonic time of the first submit (flush latency)
    error: Exception | None = None  # why the last attempt failed
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def points(self) -> int:
        """Points this job writes."""
        return self.held.points

    def partitions(self) -> set[int]:
        """Partitions with records in this job."""
        return {r.partition for r in self.held.records}

    def drop(self, partitions: set[int]) -> int:
        """Forget the records of `partitions` (uncommitted, so redelivered); return points."""
        before = len(self.held)
        dropped = self.held.drop(partitions)
        if len(self.held) != before and not self.written:
            self.stale = True
        return dropped


class Writer:
    """The `collector-writer` thread: runs `execute(job)` for one submitted job at a time."""

    NAME = "collector-writer"

    def __init__(self, execute: Callable[[WriteJob], None], group: str) -> None:
        self._execute = execute
        self._group = group
        self._jobs: queue.SimpleQueue[WriteJob | None] = queue.SimpleQueue()
        # A daemon so that a write hung past every timeout cannot keep the process alive.
        self._thread = threading.Thread(target=self._loop, name=self.NAME, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def submit(self, job: WriteJob) -> None:
        """Hand `job` to the thread; `job.done` is set when it succeeded or failed."""
        job.done.clear()
        job.error = None
        self._jobs.put(job)

    def stop(self, timeout_s: float) -> None:
        """Let the thread finish the job it holds, then end it."""
        if not self._thread.is_alive():
            return
        self._jobs.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("writer did not stop in time", extra={"loop": self.NAME})

    def _loop(self) -> None:
        log.info("loop started", extra={"loop": self.NAME, "group": self._group})
        try:
            while (job := self._jobs.get()) is not None:
                try:
                    self._execute(job)
                except Exception as exc:  # the loop thread decides: retry, or re-raise a bug
                    job.error = exc
                finally:
                    job.done.set()
        finally:
            log.info("loop stopped", extra={"loop": self.NAME, "group": self._group})

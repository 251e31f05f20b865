"""The collector's writer thread: writes one prepared batch at a time, then commits it.

A flush used to stop the collector loop for the whole store write, and the store (InfluxDB
on the same cores, or SQLite's transaction) sat idle while the loop polled and decoded. Now
the loop polls and decodes what becomes batch N+1 while this thread writes batch N, and
prepares it (merge, encode) when N is committed (`collector.runner`).

The order guarantee comes from handing over exactly one `WriteJob` at a time: the loop
submits a job only after the previous one succeeded (its write acknowledged, its dead
letters on the broker, its offsets committed). So every commit follows the write of every
point below it, and commits reach the broker in offset order. A failed job goes back to
the loop, which owns the retry policy, readiness and rebalances; the writer never retries
on its own and never holds more than the one job.

A job's lifecycle is one `JobState`, changed only through `WriteJob.to`, which asserts the
transition:

    HELD --prepare--> PREPARED --submit--> WRITING --+--> COMMITTED
      ^                  ^                            |
      |                  |                            +--> FAILED --count--> RETRYING
      +---- records dropped (not yet stored) ---------+                          |
                         +------------------ prepare again / resubmit -----------+

An expected failure of a step (store down, dead letters not acknowledged, commit refused
in transit) is a `FlushFailed` and leaves the job FAILED for the loop to retry. Anything
else is a bug: the writer logs it once as a crash of `collector-writer`, fails the job with
`LoopCrashed` and stops; the loop re-raises it and the process exits non-zero.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from collector.pending import Pending
from store.base import PreparedWrite
from walbroker.loops import LoopCrashed, run_loop

log = logging.getLogger(__name__)


class FlushFailed(Exception):
    """A flush step failed in a way a retry may fix; `kind` labels the write-error metric."""

    def __init__(self, kind: str, error: Exception) -> None:
        super().__init__(f"{kind}: {error}")
        self.kind = kind
        self.error = error


class JobState(enum.Enum):
    """Where a write job is; see the module docstring for the transitions."""

    HELD = "held"  # records held, not prepared (or records dropped since): prepare first
    PREPARED = "prepared"  # merged and encoded (or to be written one by one)
    WRITING = "writing"  # owned by the writer thread
    FAILED = "failed"  # the last attempt failed (`error`); the loop has not counted it yet
    RETRYING = "retrying"  # the loop counted the failure and will submit it again
    COMMITTED = "committed"  # stored and committed: done


_NEXT: dict[JobState, frozenset[JobState]] = {
    JobState.HELD: frozenset({JobState.PREPARED}),
    JobState.PREPARED: frozenset({JobState.WRITING, JobState.HELD}),
    JobState.WRITING: frozenset({JobState.COMMITTED, JobState.FAILED}),
    JobState.FAILED: frozenset({JobState.RETRYING}),
    JobState.RETRYING: frozenset({JobState.WRITING, JobState.HELD, JobState.PREPARED}),
    JobState.COMMITTED: frozenset(),
}


@dataclass(eq=False)
class WriteJob:
    """One flush: held records to store, then their offsets to commit.

    Owned by the loop thread except while WRITING, when the writer thread owns it; `done`
    is set when the writer hands it back (COMMITTED or FAILED).
    """

    held: Pending
    # Wait for the broker to store the commit (before a release or leaving the group); such a
    # commit also covers every earlier commit that was only sent.
    wait: bool = False
    state: JobState = JobState.HELD
    prepared: PreparedWrite | None = None  # None: nothing to write (or one_by_one)
    one_by_one: bool = False  # the merged batch is invalid: write record by record
    # The store acknowledged the points (set by the writer, once): a retry only commits, and
    # dropping records no longer means preparing again.
    stored: bool = False
    started: float = 0.0  # monotonic time of the first submit (flush latency)
    error: Exception | None = None  # why the last attempt failed (state FAILED)
    done: threading.Event = field(default_factory=threading.Event)

    def to(self, state: JobState) -> None:
        """Move to `state`; a transition the lifecycle does not have is a bug."""
        assert state in _NEXT[self.state], f"write job: {self.state.name} -> {state.name}"
        self.state = state

    @property
    def points(self) -> int:
        """Points this job writes."""
        return self.held.points

    def partitions(self) -> set[int]:
        """Partitions with records in this job."""
        return {r.partition for r in self.held.records}

    def drop(self, partitions: set[int]) -> int:
        """Forget the records of `partitions` (uncommitted, so redelivered); return points.

        Not while WRITING (the writer owns the job). A prepared job whose points are not yet
        stored goes back to HELD: what it prepared still holds the dropped records.
        """
        assert self.state is not JobState.WRITING, "dropping records of a job being written"
        before = len(self.held)
        dropped = self.held.drop(partitions)
        needs_prepare = (JobState.PREPARED, JobState.RETRYING)
        if len(self.held) != before and not self.stored and self.state in needs_prepare:
            self.to(JobState.HELD)
        return dropped


class Writer:
    """The `collector-writer` thread: runs `execute(job)` for one submitted job at a time."""

    NAME = "collector-writer"

    def __init__(self, execute: Callable[[WriteJob], None], group: str) -> None:
        self._execute = execute
        self._group = group
        self._jobs: queue.SimpleQueue[WriteJob | None] = queue.SimpleQueue()
        self._crash: LoopCrashed | None = None
        # A daemon so that a write hung past every timeout cannot keep the process alive.
        self._thread = threading.Thread(
            target=run_loop,
            args=(self.NAME, self._loop, self._crashed),
            kwargs={"group": group},
            name=self.NAME,
            daemon=True,
        )
        self._current: WriteJob | None = None  # the job being executed (writer thread only)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def submit(self, job: WriteJob) -> None:
        """Hand `job` to the thread; `job.done` is set when it succeeded or failed."""
        if self._crash is not None:
            raise self._crash
        job.to(JobState.WRITING)
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
        while (job := self._jobs.get()) is not None:
            self._current = job
            try:
                self._execute(job)
            except FlushFailed as exc:  # expected: the loop thread retries it
                job.error = exc
                job.to(JobState.FAILED)
                job.done.set()
            else:
                job.to(JobState.COMMITTED)
                job.done.set()
            self._current = None

    def _crashed(self, crash: LoopCrashed) -> None:
        """An unexpected error: hand it to the job's waiter (the loop re-raises it)."""
        self._crash = crash
        job = self._current
        if job is not None:
            job.error = crash
            job.state = JobState.FAILED  # a crash ends the lifecycle wherever it was
            job.done.set()

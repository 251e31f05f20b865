"""The partitions this streamer owns in its producer group, and each partition's progress.

Progress of a partition = rows of it appended to the log across passes (see
`streamer.plan`). It is never committed separately: every batch carries its
partition's progress and the partition's grant epoch (`Producer.track`), and the
broker stores the progress as the group's committed offset in the same transaction
as the batch, or refuses the batch (ABORTED) when the grant has moved to another
member. So the committed progress is always exactly what is in the log, and a new
owner — after a handover, a crash of a streamer or a restart of the broker —
continues at exactly the next row: no row is sent twice and none is skipped.

Handover is cooperative: when an assignment leaves a partition out, `reconcile`
stops producing it (it leaves `active`), flushes the producer (its last batches carry
the final progress) and only then releases it.

Thread-safety: `on_ack` runs on the producer's io thread; everything else on the
runner's thread. `_lock` guards the `acked` counters.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from gputel.transport.base import Assignment

log = logging.getLogger(__name__)

FLUSH_STEP_S = 5.0


class GroupMember(Protocol):
    """The part of a streamer's membership (`gputel.transport.base.StreamMember`) used here."""

    @property
    def assignment(self) -> Assignment | None: ...

    def commit(self, offsets: dict[int, int] | None = None, timeout_s: float = 10.0) -> bool: ...

    def release(self, partitions: set[int]) -> None: ...


@dataclass(slots=True)
class PartitionState:
    """One partition's progress as this streamer knows it."""

    partition: int
    sent: int = 0  # rows handed to the producer (across passes)
    acked: int = 0  # rows the broker acknowledged
    committed: int = 0  # the progress this streamer last committed (or found committed)
    next_pass_at: float | None = None  # wall clock the next pass may start (None: not planned)
    slot: int = 0  # the pass grid's slot of the current pass (`streamer.pacing.PassGrid`)


class Ownership:
    """Tracks owned partitions; takes, commits and hands them back following the group."""

    def __init__(
        self,
        member: GroupMember,
        flush: Callable[[float], None],
        track: Callable[[int, int, int], None] = lambda p, epoch, progress: None,
        untrack: Callable[[int], None] = lambda p: None,
    ) -> None:
        self.member = member
        self.flush = flush
        self.track, self.untrack = track, untrack
        self.states: dict[int, PartitionState] = {}
        self.active: set[int] = set()  # owned and being produced
        self._releasing: dict[int, int] = {}  # partition -> failed release attempts
        self._revoked: set[int] = set()  # told by the group, possibly never taken
        self.epochs: dict[int, int] = {}  # partition -> the grant epoch it is produced under
        self._lock = threading.Lock()

    # ---- acknowledgements (producer io thread) ---------------------------------------------

    def on_ack(self, partition: int, count: int) -> None:
        """Count `count` acknowledged rows of `partition`."""
        with self._lock:
            st = self.states.get(partition)
            if st is not None:
                st.acked += count

    def acked(self, partition: int) -> int:
        """Rows of `partition` acknowledged so far."""
        with self._lock:
            return self.states[partition].acked

    # ---- following the group -----------------------------------------------------------------

    def revoked(self, partitions: set[int]) -> None:
        """The group took `partitions` away (consumer io thread): hand them back next reconcile."""
        with self._lock:
            self._revoked |= partitions

    @property
    def connected(self) -> bool:
        """True while the member has an assignment (joined, stream up)."""
        return self.member.assignment is not None

    @property
    def settled(self) -> bool:
        """True when no partition waits to be handed back."""
        return not self._releasing

    def reconcile(self) -> None:
        """Apply the member's current assignment: hand back what left it, take what is new."""
        a = self.member.assignment
        if a is None:
            return  # stream down: produce nothing new until the group answers again
        granted = set(a.positions)
        with self._lock:
            revoked, self._revoked = self._revoked, set()
        gone = (self.active | revoked) - granted
        for p in gone:
            self.active.discard(p)
            self._releasing.setdefault(p, 0)
        if self._releasing:
            self._hand_back()
        # A partition held under an older grant (e.g. the broker restarted and granted it
        # again) restarts from the committed progress: its old batches are fenced.
        regranted = {p for p in granted & self.active if a.epochs.get(p) != self.epochs.get(p)}
        for p in sorted((granted - self.active - set(self._releasing)) | regranted):
            self._take(p, a.positions[p], a.epochs.get(p, 0))

    def _take(self, p: int, committed: int, epoch: int) -> None:
        """Start producing `p` at its committed progress, which is exactly what the log holds."""
        with self._lock:
            self.states[p] = PartitionState(p, committed, committed, committed)
        self.track(p, epoch, committed)
        self.epochs[p] = epoch
        self.active.add(p)
        log.info("partition taken", extra={"partition": p, "progress": committed, "epoch": epoch})

    def _hand_back(self) -> None:
        """Flush, commit the partitions being handed back, then release them."""
        try:
            self.flush(FLUSH_STEP_S)
        except TimeoutError:
            log.warning("flush before hand-back timed out; retrying", extra=self._extra())
            return
        parts = set(self._releasing)
        self.commit(parts)
        for p in parts:
            self.untrack(p)
        self.member.release(parts)
        for p in parts:
            del self._releasing[p]
        log.info("partitions released", extra={"partitions": sorted(parts)})

    def _extra(self) -> dict[str, object]:
        return {"partitions": sorted(self._releasing)}

    # ---- commits ---------------------------------------------------------------------------

    def commit(self, partitions: Iterable[int] | None = None) -> bool:
        """Note the acknowledged progress of `partitions` (the broker stored it already)."""
        parts = self.active if partitions is None else set(partitions)
        with self._lock:
            for p in parts:
                st = self.states.get(p)
                if st is None:
                    continue  # revoked by the group before this streamer ever took it
                st.committed = max(st.committed, st.acked)
        return True

    def shutdown(self, flush_timeout_s: float) -> bool:
        """Flush, then commit every owned partition; True if all that was sent is committed."""
        flushed = True
        try:
            self.flush(flush_timeout_s)
        except TimeoutError:
            log.error("shutdown: points still unacknowledged", extra=self._extra())
            flushed = False
        committed = self.commit(self.active | set(self._releasing))
        return flushed and committed

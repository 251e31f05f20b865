"""The partitions this streamer owns in its producer group, and each partition's progress.

Progress of a partition = rows of it acknowledged across passes (see `streamer.plan`).
It is committed to the group after the acknowledgements (`commit`, periodically), and a
new owner starts from the committed value, so a handover continues at the next row.

Handover is cooperative: when an assignment leaves a partition out, `reconcile` stops
producing it (it leaves `active`), flushes the producer, commits the partition's
progress and only then releases it. A partition lost without a revocation (the group
stream broke and the broker forgot the group, e.g. after a restart) is treated the
same way; its commit may then be refused, which is logged and the partition dropped.

Regaining a partition: if its committed progress is still the one this streamer
committed last, nobody produced it meanwhile and streaming continues from this
streamer's own position (rows sent but not yet acknowledged are resent by the
idempotent producer, so none is appended twice); otherwise it restarts from the
committed progress.

Thread-safety: `on_ack` runs on the producer's io thread; everything else on the
runner's thread. `_lock` guards the `acked` counters.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from walbroker.consumer import Assignment

log = logging.getLogger(__name__)

RELEASE_ATTEMPTS = 10
FLUSH_STEP_S = 5.0


class GroupMember(Protocol):
    """The part of `walbroker.consumer.Consumer` the streamer uses (a producer-group member)."""

    assignment: Assignment | None

    def commit(self, offsets: dict[int, int] | None = None, timeout_s: float = 10.0) -> bool: ...

    def release(self, partitions: set[int]) -> None: ...


@dataclass(slots=True)
class PartitionState:
    """One partition's progress as this streamer knows it."""

    partition: int
    sent: int = 0  # rows handed to the producer (across passes)
    acked: int = 0  # rows the broker acknowledged
    committed: int = 0  # the progress this streamer last committed (or found committed)
    pass_started: float = 0.0  # monotonic time the current pass began (for --pass-interval)


class Ownership:
    """Tracks owned partitions; takes, commits and hands them back following the group."""

    def __init__(self, member: GroupMember, flush: Callable[[float], None]) -> None:
        self.member = member
        self.flush = flush
        self.states: dict[int, PartitionState] = {}
        self.active: set[int] = set()  # owned and being produced
        self._releasing: dict[int, int] = {}  # partition -> failed release attempts
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
        gone = self.active - granted
        for p in gone:
            self.active.discard(p)
            self._releasing.setdefault(p, 0)
        if self._releasing:
            self._hand_back()
        for p in sorted(granted - self.active - set(self._releasing)):
            self._take(p, a.positions[p])

    def _take(self, p: int, committed: int) -> None:
        with self._lock:
            st = self.states.get(p)
            if st is None or st.committed != committed:
                resumed = st is not None
                st = self.states[p] = PartitionState(p, committed, committed, committed)
            else:
                resumed = True
            st.pass_started = time.monotonic()
        self.active.add(p)
        log.info(
            "partition taken",
            extra={"partition": p, "progress": st.sent, "committed": committed, "resumed": resumed},
        )

    def _hand_back(self) -> None:
        """Flush, commit the partitions being handed back, then release them."""
        try:
            self.flush(FLUSH_STEP_S)
        except TimeoutError:
            log.warning("flush before hand-back timed out; retrying", extra=self._extra())
            return
        parts = set(self._releasing)
        if not self.commit(parts):
            for p in parts:
                self._releasing[p] += 1
            stuck = {p for p in parts if self._releasing[p] >= RELEASE_ATTEMPTS}
            if not stuck:
                return
            log.warning(
                "progress of revoked partitions not committed; releasing anyway",
                extra={"partitions": sorted(stuck), "acked": [self.acked(p) for p in stuck]},
            )
            parts = stuck
        self.member.release(parts)
        for p in parts:
            del self._releasing[p]
        log.info("partitions released", extra={"partitions": sorted(parts)})

    def _extra(self) -> dict[str, object]:
        return {"partitions": sorted(self._releasing)}

    # ---- commits ---------------------------------------------------------------------------

    def commit(self, partitions: Iterable[int] | None = None) -> bool:
        """Commit the acknowledged progress of `partitions` (default: active); True if stored."""
        parts = self.active if partitions is None else set(partitions)
        with self._lock:
            offsets = {p: self.states[p].acked for p in parts}
        changed = {p: o for p, o in offsets.items() if o != self.states[p].committed}
        if not changed:
            return True
        if not self.member.commit(changed):
            log.info("commit refused or timed out", extra={"partitions": sorted(changed)})
            return False
        for p, o in changed.items():
            self.states[p].committed = o
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

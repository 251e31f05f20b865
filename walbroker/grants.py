"""Grant epochs of producer-group partitions: what fences a batch from a former owner.

Every time the coordinator grants a partition of a group to a member it draws a new
epoch; a producer-group batch carries the epoch its sender was granted, and the log's
writer appends it only while that grant still stands (`walbroker.writer`). So a
streamer that lost a GPU's partition — revoked, expired, or the broker restarted —
can never append to it again, and its successor resumes from the stored progress.

Threads: the coordinator is the only writer (`grant`, `revoke`, `forget`), always
under the group's lock; the writer thread reads `epoch_of` without any group lock —
so a member listener waiting for the writer (`Log.barrier`) under the group lock
cannot deadlock. `_lock` makes each read and write atomic on its own.
"""

from __future__ import annotations

import threading


class Grants:
    """(group, partition) -> the epoch of the partition's current grant."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._epochs: dict[tuple[str, int], int] = {}

    def grant(self, group: str, partition: int, epoch: int) -> None:
        """Record a new grant of `partition` (replacing any earlier one)."""
        with self._lock:
            self._epochs[(group, partition)] = epoch

    def revoke(self, group: str, partition: int) -> None:
        """The partition has no owner in `group` any more: every batch for it is fenced."""
        with self._lock:
            self._epochs.pop((group, partition), None)

    def forget(self, group: str) -> None:
        """Drop every grant of a removed group."""
        with self._lock:
            for key in [k for k in self._epochs if k[0] == group]:
                del self._epochs[key]

    def epoch_of(self, group: str, partition: int) -> int | None:
        """The epoch of the partition's current grant in `group`, or None if it has none."""
        with self._lock:
            return self._epochs.get((group, partition))

    def of_group(self, group: str, partitions: frozenset[int]) -> dict[int, int]:
        """The current epochs of some of a group's partitions (those granted)."""
        with self._lock:
            return {p: e for p in partitions if (e := self._epochs.get((group, p))) is not None}

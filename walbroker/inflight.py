"""The producer's sealed batches until they are acknowledged: sequences, grants and bounds.

Each batch gets its partition's next sequence number when it is sealed. A
partition tracked for a producer group (a `Grant`) also stamps each batch with
the grant's epoch and the progress after it. When a batch can never be
appended — refused for good, or fenced because its grant moved on — it leaves
a gap in its partition's sequence; the later batches are renumbered to close
it, and the broker (which refused them as out of order) gets them again.

Not thread-safe on its own: the producer guards it with its condition lock.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Batch:
    """A sealed batch waiting for its acknowledgement."""

    topic: str
    producer_id: str
    partition: int
    sequence: int
    payload: bytes
    count: int
    request_id: int = 0
    created: float = field(default_factory=time.monotonic)
    # (group, epoch, progress) when the partition is tracked for a producer group
    fence: tuple[str, int, int] | None = None
    dropped: bool = False


@dataclass(slots=True)
class Grant:
    """A producer-group grant of one partition and the progress its batches carry."""

    group: str
    epoch: int
    progress: int
    fenced: bool = False  # the broker refused it: batches sealed under it are dropped


class InFlight:
    """Unacknowledged batches by request id (= sending order), with point and byte counts."""

    def __init__(self, topic: str, producer_id: str) -> None:
        self.topic, self.producer_id = topic, producer_id
        self.batches: dict[int, Batch] = {}
        self.grants: dict[int, Grant] = {}
        self.points = 0  # items accepted and not yet acknowledged or dropped (open ones too)
        self.bytes = 0  # encoded bytes of sealed, unacknowledged batches
        self._sequences: dict[int, int] = {}
        self._ids = itertools.count(1)
        # Sealed and not yet handed to the stream, in sealing order (= request id order).
        self._unsent: dict[int, Batch] = {}

    def seal(self, partition: int, count: int) -> Batch:
        """A new batch with the partition's next sequence (and its grant's progress).

        Under a fenced grant the batch is born dropped (no sequence, never sent): sent
        untracked it would be appended without progress, and the partition's next owner
        sends the same rows again.
        """
        grant = self.grants.get(partition)
        if grant is not None and grant.fenced:
            self.points -= count
            return Batch(self.topic, self.producer_id, partition, -1, b"", count, dropped=True)
        seq = self._sequences.get(partition, 0)
        self._sequences[partition] = seq + 1
        batch = Batch(self.topic, self.producer_id, partition, seq, b"", count, next(self._ids))
        if grant is not None:
            grant.progress += count
            batch.fence = (grant.group, grant.epoch, grant.progress)
        self.batches[batch.request_id] = batch
        self._unsent[batch.request_id] = batch
        return batch

    def encoded(self, batch: Batch, payload: bytes) -> bool:
        """Attach the payload; False when the batch was dropped while being encoded."""
        if batch.dropped:
            return False
        batch.payload = payload
        self.bytes += len(payload)
        return True

    def ready(self) -> list[Batch]:
        """Take the batches to send now: those sealed before the first one still encoding.

        Batches are encoded outside the producer's lock, by whichever thread sealed them, so
        a later batch of a partition can finish first. Sent first, the broker would refuse it
        as out of order and the producer would resend everything unacknowledged: so a batch
        goes out only after every batch sealed before it.
        """
        out: list[Batch] = []
        for batch in self._unsent.values():
            if not batch.payload:
                break
            out.append(batch)
        for batch in out:
            del self._unsent[batch.request_id]
        return out

    def acked(self, request_id: int) -> Batch | None:
        """Forget an acknowledged batch (None if it was already acknowledged or dropped)."""
        batch = self.batches.pop(request_id, None)
        if batch is not None:
            self._release([batch])
        return batch

    def in_order(self) -> list[Batch]:
        """Unacknowledged batches already handed to the stream, in sending order (a resend)."""
        return [b for i, b in sorted(self.batches.items()) if i not in self._unsent]

    def fail(self, batch: Batch) -> None:
        """Drop one batch the broker will never take, and close its sequence gap.

        Under a grant, the later batches of that grant carry a progress that counts the
        dropped one's points: appended, they would store a progress ahead of the log. They
        are dropped too, and the grant is fenced until the partition is tracked again.
        """
        if batch.fence is None:
            self._drop(batch.partition, [batch])
        else:
            self._end_grant(batch, batch.sequence)

    def fence(self, batch: Batch) -> list[Batch]:
        """Drop every batch of `batch`'s grant (it moved on), and later ones; return them."""
        return self._end_grant(batch, -1) if batch.fence is not None else []

    def _end_grant(self, batch: Batch, after: int) -> list[Batch]:
        """Drop the batches of `batch`'s grant from sequence `after` on; fence the grant."""
        assert batch.fence is not None
        epoch = batch.fence[1]
        doomed = [
            b
            for b in self.batches.values()
            if b.partition == batch.partition
            and b.fence is not None
            and b.fence[1] == epoch
            and b.sequence >= after
        ]
        self._drop(batch.partition, doomed)
        grant = self.grants.get(batch.partition)
        if grant is not None and grant.epoch == epoch:
            grant.fenced = True  # until the partition is tracked under a new grant
        return doomed

    def _drop(self, partition: int, doomed: list[Batch]) -> None:
        if not doomed:
            return
        for b in doomed:
            b.dropped = True
            self.batches.pop(b.request_id, None)
            self._unsent.pop(b.request_id, None)
        self._release(doomed)
        first = min(b.sequence for b in doomed)
        later = sorted(
            (b for b in self.batches.values() if b.partition == partition and b.sequence > first),
            key=lambda b: b.sequence,
        )
        for seq, b in enumerate(later, start=first):
            b.sequence = seq
        self._sequences[partition] = first + len(later)

    def _release(self, batches: list[Batch]) -> None:
        self.points -= sum(b.count for b in batches)
        self.bytes -= sum(len(b.payload) for b in batches)

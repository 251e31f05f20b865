"""The hot buffer: recent records of every partition kept in memory under ONE byte budget.

Consumers that keep up read from memory instead of LMDB. Each partition's
`PartitionState.hot` list holds its recent records in offset order; this class
holds the same records in append order over all partitions and evicts the
oldest first once the budget is passed, so 256 busy partitions share the budget
instead of each keeping its own (the RSS stays bounded whatever the partition
count).

Threads: only the writer thread calls `add` and `evict`; readers take a
partition's `lock` to read its list, and `add`/`evict` change a list only under
that lock. A record retention removed from a partition's list stays counted
here until it is evicted, because until then this buffer still holds it.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from walbroker.types import Record

if TYPE_CHECKING:
    from walbroker.log import PartitionState


class HotBuffer:
    """Append-ordered records of every partition, evicted oldest first beyond `budget_bytes`."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.bytes = 0  # payload bytes held (writer thread only)
        self._order: deque[tuple[PartitionState, Record]] = deque()

    def add(self, state: PartitionState, records: list[Record]) -> None:
        """Keep `records` (just committed to `state`'s partition) in memory."""
        if not records:
            return
        with state.lock:
            state.hot.extend(records)
        for rec in records:
            self._order.append((state, rec))
            self.bytes += len(rec.payload)

    def evict(self) -> None:
        """Drop the oldest records until the buffer fits its budget again."""
        while self.bytes > self.budget_bytes and self._order:
            state, rec = self._order.popleft()
            self.bytes -= len(rec.payload)
            with state.lock:
                # Retention may have removed it from the front already; then nothing to do.
                if state.hot and state.hot[0] is rec:
                    del state.hot[0]

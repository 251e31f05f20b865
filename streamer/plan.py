"""Which rows each partition streams, and where a partition's progress points in them.

A partition's rows are the rows of its GPUs (key = uuid, `partition_for_key`), in file
order. Its *progress* is the number of its rows acknowledged across passes, committed
to the producer group: progress `P` means pass `P // n` (from 0), next row `P % n`,
where `n` is the partition's row count. So a new owner resumes exactly at the next row.
"""

from __future__ import annotations

from array import array

from streamer.source import SourceRows
from walbroker.types import partition_for_key


class PartitionPlan:
    """Each partition's row indices into a `SourceRows`, in file order."""

    def __init__(self, rows: SourceRows, partitions: int) -> None:
        self.partitions = partitions
        part = rows.gpu_partitions(lambda uuid: partition_for_key(uuid, partitions))
        self._rows: list[array[int]] = [array("I") for _ in range(partitions)]
        for i, g in enumerate(rows.gpu):
            self._rows[part[g]].append(i)

    def rows_of(self, partition: int) -> array[int]:
        """Return the row indices of `partition` in file order."""
        return self._rows[partition]

    def size(self, partition: int) -> int:
        """Return the number of rows of `partition` in one pass."""
        return len(self._rows[partition])

    def target(self, partition: int, passes: int | None) -> int | None:
        """Return the progress at which `partition` is done (None: never, i.e. forever)."""
        return None if passes is None else passes * self.size(partition)

    def locate(self, partition: int, progress: int) -> tuple[int, int]:
        """Return (pass number from 0, next row position in the pass) of a progress value."""
        n = self.size(partition)
        return divmod(progress, n) if n else (0, 0)

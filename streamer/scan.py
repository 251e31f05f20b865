"""Reading the source once per pass, as a stream of row blocks, within a memory budget.

A *scan* is one read of the whole CSV, in file order, as `RowBlock`s of `block_rows`
records (rows already split by partition). The first scan parses the file while the
streamer publishes, so publishing starts after the first block, not after the file.

Later scans (the streamer's next passes) reuse the parsed blocks if the whole file fit
in `cache_bytes` (24 bytes a row: a 64 MiB budget holds ~2.8 M rows); a larger file is
parsed again on every scan, so memory never grows with the file: it holds one block,
the GPU table (`streamer.gpus`, growing with distinct GPUs, not rows) and the metric
and timestamp dictionaries. The GPU table and the parser outlive scans, so GPU and
metric ordinals and each GPU's partition stay the same across passes, and a GPU's
`labels_raw` is parsed once per process.

After the first complete scan, `sizes[p]` is the number of rows of partition `p` in
one pass and `report` what the scan rejected. Not thread-safe: one per streamer thread.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator

from streamer.columns import Columns
from streamer.gpus import GpuTable
from streamer.source import ParseReport, RowBlock, RowParser, blocks, open_csv

log = logging.getLogger(__name__)

BLOCK_ROWS = 4096


class CsvScanner:
    """Scans a DCGM CSV again and again; caches the parsed blocks while the file fits."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        partitions: int,
        partition_for: Callable[[str], int],
        cache_bytes: int,
        block_rows: int = BLOCK_ROWS,
        lines: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.partitions = partitions
        self.table = GpuTable(partition_for)
        self.cache_bytes = cache_bytes
        self.block_rows = block_rows
        self._lines = lines or (lambda: open_csv(self.path))
        self.parser: RowParser | None = None
        self.sizes: list[int] | None = None
        self.report: ParseReport | None = None
        self.scans = 0  # complete scans
        self._cache: list[RowBlock] | None = None  # the whole file, once it is known to fit

    @property
    def metrics(self) -> list[str]:
        """Metric names by ordinal."""
        return self.parser.metrics if self.parser is not None else []

    @property
    def cached(self) -> bool:
        """True when later scans are served from memory."""
        return self._cache is not None

    def scan(self) -> Iterator[RowBlock]:
        """Yield the whole file's rows block by block (a scan left early is simply dropped)."""
        if self._cache is not None:
            yield from self._cache
            self.scans += 1
            return
        started = time.perf_counter()
        keep: list[RowBlock] | None = [] if self.cache_bytes > 0 else None
        kept_bytes = 0
        sizes = [0] * self.partitions
        lines = self._lines()
        try:
            for _parser, block in blocks(lines, self._parser_for, self.block_rows, self.path):
                for p, part in enumerate(block.parts):
                    sizes[p] += len(part)
                if keep is not None:
                    kept_bytes += block.size_bytes
                    keep = keep if kept_bytes <= self.cache_bytes else None
                    if keep is not None:
                        keep.append(block)
                yield block
        finally:  # also when the scan is left early (the generator is closed)
            close = getattr(lines, "close", None)
            if close is not None:
                close()
        assert self.parser is not None
        self.report = self.parser.report(self.path, time.perf_counter() - started)
        self.sizes, self._cache = sizes, keep
        self.scans += 1
        log.info(
            "source scanned",
            extra={
                "source": self.path, "rows_read": self.report.rows_read,
                "rows_accepted": sum(sizes), "rows_rejected": self.report.rows_rejected,
                "gpus": len(self.table), "metrics": len(self.metrics),
                "elapsed_s": round(self.report.elapsed_s, 3),
                "cached": keep is not None, "cache_bytes": kept_bytes,
            },
        )  # fmt: skip
        if self.scans == 1 and not sum(sizes):  # a header-only file, or every row rejected
            log.warning(
                "no row of the source is usable: nothing to send",
                extra={"source": self.path, "rows_read": self.report.rows_read,
                       "rows_rejected": self.report.rows_rejected},
            )  # fmt: skip

    def _parser_for(self, cols: Columns) -> RowParser:
        """The parser of every scan (new tallies each time; ordinals kept)."""
        if self.parser is None or self.parser.cols != cols:
            self.parser = RowParser(cols, self.table, self.partitions)
        else:
            self.parser.reset_tallies()
        return self.parser

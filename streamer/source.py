"""The telemetry source: a DCGM exporter CSV, validated row by row as a stream.

Columns are bound by header name, case-insensitively (`streamer.columns`); a UTF-8 BOM,
CRLF line ends and extra columns are tolerated. A GPU's identity is its uuid, else
`<Hostname>/<gpu_id>`; `labels_raw` is parsed once per GPU (`streamer.gpus`).

Rows are skipped and counted by `Reject` reason: a timestamp that is no timestamp, or
one outside what a signed 64-bit nanosecond count holds (before 1970-01-01 or after
2262-04-11), rejects the row like a bad value does. A `labels_raw` that does not parse
keeps the row (its GPU has no labels) and is counted as a `Defect`, once per GPU.
Blank lines are ignored; text after a closing quote rejects the row (`malformed_csv`).
Line numbers are the file's (a record's last line).

`RowParser` turns records into `RowBlock`s: the accepted rows of a stretch of the
file, already split by partition (a GPU's partition is computed once). `streamer.scan`
reads the file block by block; `parse_csv`/`read_csv` collect a whole file into
`SourceRows` (tests, benchmarks).
"""

from __future__ import annotations

import csv
import logging
import os
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from math import isfinite
from operator import itemgetter
from typing import TextIO

from prometheus_client import REGISTRY, CollectorRegistry

from proto.batch import Gpu
from streamer.columns import Columns, SourceError, bind_columns
from streamer.gpus import GpuTable, Unusable, describe_gpu
from streamer.metrics import StreamerMetrics
from streamer.timestamps import parse_timestamp_ns

__all__ = [
    "Defect", "Issue", "ParseReport", "PartRows", "Reject", "RowBlock", "RowParser",
    "SourceError", "SourceRows", "check_header", "describe_gpu", "new_metrics", "open_csv",
    "parse_csv", "read_csv", "record_pass",
]  # fmt: skip

log = logging.getLogger(__name__)

MAX_TIME_NS = 2**63 - 1  # 2262-04-11T23:47:16.854775807Z, the last instant an int64 holds


class Reject(StrEnum):
    """Why a row was skipped (the `reason` label of the rejected-rows counter)."""

    FIELD_COUNT = "field_count"
    MALFORMED_CSV = "malformed_csv"
    MISSING_METRIC = "missing_metric"
    MISSING_GPU_ID = "missing_gpu_id"
    BAD_GPU_ID = "bad_gpu_id"
    NO_IDENTITY = "no_identity"
    VALUE_NOT_NUMERIC = "value_not_numeric"
    VALUE_NOT_FINITE = "value_not_finite"
    BAD_TIMESTAMP = "bad_timestamp"
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"


class Defect(StrEnum):
    """A defect of a row that is kept anyway (the `reason` label of the warnings counter)."""

    BAD_LABELS = "bad_labels"


_UNUSABLE = {
    Unusable.MISSING_GPU_ID: Reject.MISSING_GPU_ID,
    Unusable.BAD_GPU_ID: Reject.BAD_GPU_ID,
    Unusable.NO_IDENTITY: Reject.NO_IDENTITY,
}
_BAD_TIME, _TIME_OUT_OF_RANGE = -1, -2  # cached "timestamps" that reject the row


@dataclass(frozen=True, slots=True)
class Issue:
    """How many rows had one problem, and the file line of the first."""

    reason: str
    count: int
    first_line: int


@dataclass(frozen=True)
class ParseReport:
    """What one read of the source found: rows read, rejections and defects by reason."""

    source: str
    rows_read: int
    rejected: Mapping[str, Issue]
    defects: Mapping[str, Issue]
    elapsed_s: float = 0.0

    @property
    def rows_rejected(self) -> int:
        """Return the number of rows skipped for any reason."""
        return sum(i.count for i in self.rejected.values())


@dataclass(slots=True)
class PartRows:
    """Accepted rows of one partition in file order: GPU and metric ordinals, value, time."""

    gpu: array[int] = field(default_factory=lambda: array("I"))
    metric: array[int] = field(default_factory=lambda: array("I"))
    value: array[float] = field(default_factory=lambda: array("d"))
    source_time_ns: array[int] = field(default_factory=lambda: array("q"))

    def __len__(self) -> int:
        return len(self.value)

    @property
    def size_bytes(self) -> int:
        """Memory held by the columns (24 bytes a row)."""
        return len(self.value) * 24


@dataclass(frozen=True, slots=True)
class RowBlock:
    """The accepted rows of a stretch of the file, by partition; `rows_read` counts all."""

    parts: tuple[PartRows, ...]
    rows_read: int

    @property
    def size_bytes(self) -> int:
        """Memory held by the block's columns."""
        return sum(p.size_bytes for p in self.parts)


@dataclass
class _Tally:
    """Counts and first line per reason."""

    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str, line: int) -> None:
        """Count one occurrence of `reason` at `line`."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.first.setdefault(reason, line)

    def issues(self) -> dict[str, Issue]:
        """Return the tally as `Issue`s by reason."""
        return {r: Issue(r, n, self.first[r]) for r, n in self.counts.items()}


class RowParser:
    """Validates records one by one into per-partition columns (`take_block` hands them out).

    The GPU table, metric names and timestamp cache outlive blocks and scans, so a
    GPU or metric keeps its ordinal for the life of the parser.
    """

    _TIME_CACHE_MAX = 65_536

    def __init__(self, cols: Columns, gpus: GpuTable, partitions: int) -> None:
        self.cols, self.table, self.partitions = cols, gpus, partitions
        self.metrics: list[str] = []
        self.rejected, self.defects = _Tally(), _Tally()
        self.rows_read = 0
        self._pad = cols.padded
        self._descriptor = itemgetter(
            cols.uuid, cols.hostname, cols.gpu_id, cols.device, cols.modelname,
            cols.container, cols.pod, cols.namespace,
        )  # fmt: skip
        self._metric_ordinal: dict[str, int] = {}
        self._gpu_ordinal = gpus.by_columns  # the hot path's lookup, read-only here
        self._partition = gpus.partition
        self._times: dict[str, int] = {}
        self._block_read = 0
        self._parts = self._new_parts()

    def _new_parts(self) -> list[PartRows]:
        parts = [PartRows() for _ in range(self.partitions)]
        self._appenders = [
            (p.gpu.append, p.metric.append, p.value.append, p.source_time_ns.append) for p in parts
        ]
        return parts

    def take_block(self) -> RowBlock:
        """Return the rows accepted since the last call."""
        block = RowBlock(tuple(self._parts), self._block_read)
        self._parts, self._block_read = self._new_parts(), 0
        return block

    def reset_tallies(self) -> None:
        """Start counting rows and reasons afresh (a new scan of the same file)."""
        self.rejected, self.defects = _Tally(), _Tally()
        self.rows_read = 0
        self.table.bad_labels = 0

    def malformed(self, line: int) -> None:
        """Count a record the CSV reader refused."""
        self.rows_read += 1
        self._block_read += 1
        self.rejected.add(Reject.MALFORMED_CSV, line)

    def add(self, f: list[str], line: int) -> None:
        """Validate one record ending at `line`; keep it or count why not.

        The hot path: a handful of dict lookups on the raw field texts (GPU descriptor,
        metric, timestamp), one float conversion and four array appends.
        """
        self.rows_read += 1
        self._block_read += 1
        c = self.cols
        if len(f) != c.width:
            return self.rejected.add(Reject.FIELD_COUNT, line)
        if self._pad:
            f.append("")
        metric = self._metric_ordinal.get(f[c.metric_name])
        if metric is None:
            metric = self._metric(f[c.metric_name])
        if metric < 0:
            return self.rejected.add(Reject.MISSING_METRIC, line)
        g = self._gpu_ordinal.get(self._descriptor(f), -9)
        if g < 0:
            g = self._gpu(f, line)
            if g < 0:
                return self.rejected.add(_UNUSABLE[Unusable(g)], line)
        try:
            value = float(f[c.value])
        except ValueError:
            return self.rejected.add(Reject.VALUE_NOT_NUMERIC, line)
        if not isfinite(value):
            return self.rejected.add(Reject.VALUE_NOT_FINITE, line)
        ns = self._times.get(f[c.timestamp])
        if ns is None:
            ns = self._time_ns(f[c.timestamp])
        if ns < 0:
            return self.rejected.add(
                Reject.BAD_TIMESTAMP if ns == _BAD_TIME else Reject.TIMESTAMP_OUT_OF_RANGE, line
            )
        append_gpu, append_metric, append_value, append_time = self._appenders[self._partition[g]]
        append_gpu(g)
        append_metric(metric)
        append_value(value)
        append_time(ns)
        return None

    def _gpu(self, f: list[str], line: int) -> int:
        """The GPU of a row whose descriptor is new or needs its labels (`GpuTable.ordinal`)."""
        table = self.table
        bad_labels = table.bad_labels
        g = table.ordinal(self._descriptor(f), f[self.cols.labels_raw])
        if table.bad_labels != bad_labels:
            self.defects.add(Defect.BAD_LABELS, line)
        return g

    def _metric(self, text: str) -> int:
        """Return the ordinal of a metric name seen for the first time (-1: empty)."""
        name = text.strip()
        if not name:
            ordinal = -1
        elif name in self.metrics:
            ordinal = self.metrics.index(name)
        else:
            ordinal = len(self.metrics)
            self.metrics.append(name)
        self._metric_ordinal[text] = ordinal
        return ordinal

    def _time_ns(self, text: str) -> int:
        """Return a CSV timestamp in ns, or a negative code for one that rejects the row."""
        if len(self._times) >= self._TIME_CACHE_MAX:
            self._times.clear()
        try:
            ns = parse_timestamp_ns(text)
        except (ValueError, OverflowError):
            ns = _BAD_TIME
        else:
            ns = ns if 0 <= ns <= MAX_TIME_NS else _TIME_OUT_OF_RANGE
        self._times[text] = ns
        return ns

    def report(self, source: str, elapsed_s: float) -> ParseReport:
        """Return what the parser found so far."""
        return ParseReport(
            source, self.rows_read, self.rejected.issues(), self.defects.issues(), elapsed_s
        )


def open_csv(path: str | os.PathLike[str]) -> TextIO:
    """Open a CSV file for `csv.reader` (BOM dropped); raise `SourceError` if it cannot be read.

    The file itself is the line iterator (no generator around it: that cost ~10 % of a scan).
    The caller closes it.
    """
    try:
        # utf-8-sig drops a BOM; newline="" keeps CRLF and quoted newlines for the reader.
        return open(path, encoding="utf-8-sig", errors="replace", newline="")
    except OSError as exc:
        raise SourceError(f"cannot read {os.fspath(path)!r}: {exc}") from exc


def check_header(path: str | os.PathLike[str]) -> Columns:
    """Read a CSV's header only; raise `SourceError` if the file cannot be streamed."""
    lines = open_csv(path)
    try:
        return bind_columns(_header(csv.reader(lines, strict=True), os.fspath(path)))
    finally:
        lines.close()


def _header(reader: Iterator[list[str]], source: str) -> list[str]:
    """The first record of a CSV reader; `SourceError` if there is none or it is unreadable."""
    try:
        return next(reader)
    except StopIteration:
        raise SourceError(f"{source}: empty file, no CSV header") from None
    except csv.Error as exc:
        raise SourceError(f"{source}: unreadable CSV header: {exc}") from exc


def blocks(
    lines: Iterable[str],
    parser_for: Callable[[Columns], RowParser],
    block_rows: int,
    source: str = "<stream>",
) -> Iterator[tuple[RowParser, RowBlock]]:
    """Parse CSV lines as a stream: yield (parser, block) every `block_rows` records.

    `csv.reader` in strict mode: a stray quote rejects the row (malformed_csv); the C
    reader splits a real export's 450-byte lines at ~3 us each (measured: faster than
    a `str.split` fast path with the checks that make it exact).
    """
    reader = csv.reader(lines, strict=True)
    parser = parser_for(bind_columns(_header(reader, source)))
    add = parser.add
    n = 0
    while True:
        try:
            for fields in reader:
                if fields:  # a blank line is no row
                    add(fields, reader.line_num)
                    n += 1
                    if n >= block_rows:
                        yield parser, parser.take_block()
                        n = 0
            break
        except csv.Error:
            parser.malformed(reader.line_num)
            n += 1
    yield parser, parser.take_block()


@dataclass(frozen=True)
class SourceRows:
    """A whole file's accepted rows in columns, in file order (tests, benchmarks)."""

    gpus: tuple[Gpu, ...]
    metrics: tuple[str, ...]
    gpu: array[int]
    metric: array[int]
    value: array[float]
    source_time_ns: array[int]
    report: ParseReport

    def __len__(self) -> int:
        return len(self.value)

    def rows(self) -> Iterator[tuple[int, int, float, int]]:
        """Yield (gpu ordinal, metric ordinal, value, source_time_ns) per row, in file order."""
        return zip(self.gpu, self.metric, self.value, self.source_time_ns, strict=True)

    def gpu_partitions(self, partition_for: Callable[[str], int]) -> list[int]:
        """Return the partition of each GPU ordinal, `partition_for` applied to its uuid."""
        return [partition_for(g.uuid) for g in self.gpus]


def parse_csv(lines: Iterable[str], source: str = "<stream>") -> SourceRows:
    """Parse DCGM CSV text (an open file or lines) whole; `SourceError` on an unusable header."""
    started = time.perf_counter()
    table = GpuTable(lambda _uuid: 0)
    rows = PartRows()
    parsers: list[RowParser] = []

    def parser_for(cols: Columns) -> RowParser:
        parsers.append(RowParser(cols, table, 1))
        return parsers[0]

    for _parser, block in blocks(lines, parser_for, 65_536, source):
        (part,) = block.parts
        for mine, theirs in zip(
            (rows.gpu, rows.metric, rows.value, rows.source_time_ns),
            (part.gpu, part.metric, part.value, part.source_time_ns),
            strict=True,
        ):
            mine.extend(theirs)  # type: ignore[attr-defined]
    parser = parsers[0]
    return SourceRows(
        tuple(table.gpus), tuple(parser.metrics), rows.gpu, rows.metric, rows.value,
        rows.source_time_ns, parser.report(source, time.perf_counter() - started),
    )  # fmt: skip


def read_csv(path: str | os.PathLike[str]) -> SourceRows:
    """Read and validate a DCGM CSV file whole; raise `SourceError` if it cannot be used."""
    with open_csv(path) as f:
        return parse_csv(f, os.fspath(path))


def record_pass(report: ParseReport, metrics: StreamerMetrics | None, pass_number: int) -> None:
    """Count one pass over the source and log each rejection and defect reason once."""
    if metrics is not None:
        metrics.rows_read.inc(report.rows_read)
    for kind, issues in (("rejected", report.rejected), ("kept with defect", report.defects)):
        for issue in issues.values():
            if metrics is not None:
                counter = metrics.rows_rejected if kind == "rejected" else metrics.row_warnings
                counter.labels(reason=issue.reason).inc(issue.count)
            log.warning(
                "rows %s: %s x%d, first at line %d",
                kind, issue.reason, issue.count, issue.first_line,
                extra={
                    "reason": issue.reason, "count": issue.count, "line": issue.first_line,
                    "pass_number": pass_number, "source": report.source,
                },
            )  # fmt: skip


def new_metrics(registry: CollectorRegistry = REGISTRY) -> StreamerMetrics:
    """Return the streamer metrics with every rejection and defect reason exported at 0."""
    return StreamerMetrics(
        registry,
        reject_reasons=[r.value for r in Reject],
        warning_reasons=[d.value for d in Defect],
    )

"""Validating CSV records into per-partition columns: the streamer's row path.

`RowParser.add_rows` takes the records of a stretch of the file (lists of field texts,
as `csv.reader` makes them) and keeps the accepted ones as GPU and metric ordinals,
values and source times, already split by partition (`take_block` hands them out as a
`RowBlock`). Rows are skipped and counted by `Reject` reason; a `labels_raw` that does
not parse keeps the row and is counted as a `Defect` once per GPU.

Most rows of a real export repeat what earlier rows said: a known GPU descriptor, a
known metric name, a timestamp shared by a whole scrape. So a block is validated
column by column with C-level `map`s over dictionaries keyed by the raw field texts
(one descriptor tuple, one metric, one timestamp and one `float` per row, no Python
frame per row); only a row one of those lookups does not clear (a GPU, metric or
timestamp seen for the first time, or a row that is rejected) takes the per-row path
(`_row`), in file order, which interns new GPUs and metrics and names the rejection
reason exactly as a row-by-row reader would. Both paths give the same rows, ordinals
and tallies (tests/streamer/test_rows.py compares them).
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import compress
from math import isfinite
from operator import itemgetter
from typing import Any

from streamer.columns import Columns
from streamer.gpus import REPLACEMENT, GpuTable, Unusable
from streamer.timestamps import parse_timestamp_ns

MAX_TIME_NS = 2**63 - 1  # 2262-04-11T23:47:16.854775807Z, the last instant an int64 holds
# The metric names the REST API's `metric` parameter accepts (gateway.params; a test keeps the
# two equal): a point under any other name would be stored and listed, but never selectable.
METRIC_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:.\-]{0,255}")
_BAD_METRIC = -2
_BAD_METRIC_ENCODING = -3


class Reject(StrEnum):
    """Why a row was skipped (the `reason` label of the rejected-rows counter)."""

    FIELD_COUNT = "field_count"
    MALFORMED_CSV = "malformed_csv"
    MISSING_METRIC = "missing_metric"
    BAD_METRIC_NAME = "bad_metric_name"
    MISSING_GPU_ID = "missing_gpu_id"
    BAD_GPU_ID = "bad_gpu_id"
    NO_IDENTITY = "no_identity"
    BAD_GPU_FIELD = "bad_gpu_field"  # a uuid, hostname, ... no store accepts as a tag
    BAD_ENCODING = "bad_encoding"  # a GPU descriptor field or metric name is not UTF-8
    BAD_UUID = "bad_uuid"  # a uuid the REST API cannot name (`streamer.gpus.uuid_addressable`)
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
    Unusable.BAD_GPU_FIELD: Reject.BAD_GPU_FIELD,
    Unusable.BAD_ENCODING: Reject.BAD_ENCODING,
    Unusable.BAD_UUID: Reject.BAD_UUID,
}
_BAD_METRICS = {
    -1: Reject.MISSING_METRIC,
    _BAD_METRIC: Reject.BAD_METRIC_NAME,
    _BAD_METRIC_ENCODING: Reject.BAD_ENCODING,
}
_BAD_TIME, _TIME_OUT_OF_RANGE = -1, -2  # cached "timestamps" that reject the row
# A block's GPU ordinals, metric ordinals, values and source times; None where a cache missed.
_Columns = tuple[list[Any], list[Any], list[Any], list[Any]]
_Row = tuple[int, int, float, int]  # one accepted row: GPU, metric, value, source time


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
    """Validates records into per-partition columns (`take_block` hands them out).

    The GPU table, metric names and timestamp cache outlive blocks and scans, so a
    GPU or metric keeps its ordinal for the life of the parser. Not thread-safe.
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
        self._metric_text = itemgetter(cols.metric_name)
        self._value_text = itemgetter(cols.value)
        self._time_text = itemgetter(cols.timestamp)
        self._metric_ordinal: dict[str, int] = {}  # by raw text, rejections (<0) included
        self._metric_index: dict[str, int] = {}  # by name: texts differing in spaces share one
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

    def add_rows(self, rows: list[list[str]], lines: Sequence[int]) -> None:
        """Validate records in file order (`lines[i]`: the file line `rows[i]` ends on).

        The records are changed in place (a missing optional column's empty field is
        appended). The hot path: a few C-level passes over the block (see the module doc).
        """
        n = len(rows)
        if not n:
            return None
        self.rows_read += n
        self._block_read += n
        width = self.cols.width
        widths_ok = None if set(map(len, rows)) == {width} else [len(f) == width for f in rows]
        if self._pad:
            for f in rows if widths_ok is None else compress(rows, widths_ok):
                f.append("")
        if widths_ok is not None:  # rare: every row takes the per-row path
            return self._resolve(rows, lines, widths_ok, _unknown(n))
        columns = self._lookup(rows)
        try:  # a None (a new GPU, metric or time) makes min() raise; sum() is NaN/inf if any is
            clean = (
                min(columns[0]) >= 0 and min(columns[1]) >= 0 and min(columns[3]) >= 0
                and isfinite(sum(columns[2]))
            )  # fmt: skip
        except TypeError:
            clean = False
        if not clean:
            return self._resolve(rows, lines, None, columns)
        return self._append(*columns)

    def _lookup(self, rows: list[list[str]]) -> _Columns:
        """The block's GPU and metric ordinals, values and times from the caches (None: miss)."""
        gpu = list(map(self._gpu_ordinal.get, map(self._descriptor, rows)))
        metric = list(map(self._metric_ordinal.get, map(self._metric_text, rows)))
        try:
            value = list(map(float, map(self._value_text, rows)))
        except ValueError:  # a value that is no number: that row takes the per-row path
            value = list(map(_float_or_nan, map(self._value_text, rows)))
        texts = list(map(self._time_text, rows))
        times = self._times
        ns = list(map(times.get, texts))
        if None in ns:
            for text in set(texts).difference(times):
                self._time_ns(text)
            ns = list(map(times.get, texts))  # a None left (cache cleared): per-row path
        return gpu, metric, value, ns

    def _resolve(
        self, rows: list[list[str]], lines: Sequence[int], widths_ok: list[bool] | None,
        columns: _Columns,
    ) -> None:  # fmt: skip
        """Send the rows the lookups did not clear through `_row`, in order; append them all."""
        gpu, metric, value, ns = columns
        keep = [True] * len(rows)
        for i, (g, m, v, t) in enumerate(zip(gpu, metric, value, ns, strict=True)):
            if None not in (g, m, t) and g >= 0 and m >= 0 and t >= 0 and isfinite(v):
                continue
            if widths_ok is not None and not widths_ok[i]:
                row = self._reject(Reject.FIELD_COUNT, lines[i])
            else:
                row = self._row(rows[i], lines[i])
            if row is None:
                keep[i] = False
            else:
                gpu[i], metric[i], value[i], ns[i] = row
        if all(keep):
            return self._append(gpu, metric, value, ns)
        return self._append(*(list(compress(column, keep)) for column in columns))

    def _append(self, gpu: list[Any], metric: list[Any], value: list[Any], ns: list[Any]) -> None:
        """Append accepted rows to their partitions' columns, in order."""
        if self.partitions == 1:
            (part,) = self._parts
            part.gpu.extend(gpu)
            part.metric.extend(metric)
            part.value.extend(value)
            part.source_time_ns.extend(ns)
            return
        partition, appenders = self._partition, self._appenders
        for g, m, v, t in zip(gpu, metric, value, ns, strict=True):
            append_gpu, append_metric, append_value, append_time = appenders[partition[g]]
            append_gpu(g)
            append_metric(m)
            append_value(v)
            append_time(t)

    def _reject(self, reason: Reject, line: int) -> _Row | None:
        """Count a rejected row (None: what `_row` returns for it)."""
        self.rejected.add(reason, line)
        return None

    def _row(self, f: list[str], line: int) -> _Row | None:
        """Validate one record of the right width: (gpu, metric, value, ns), or None (counted)."""
        c = self.cols
        metric = self._metric_ordinal.get(f[c.metric_name])
        if metric is None:
            metric = self._metric(f[c.metric_name])
        if metric < 0:
            return self._reject(_BAD_METRICS[metric], line)
        g = self._gpu_ordinal.get(self._descriptor(f), -9)
        if g < 0:
            g = self._gpu(f, line)
            if g < 0:
                return self._reject(_UNUSABLE[Unusable(g)], line)
        try:
            value = float(f[c.value])
        except ValueError:
            return self._reject(Reject.VALUE_NOT_NUMERIC, line)
        if not isfinite(value):
            return self._reject(Reject.VALUE_NOT_FINITE, line)
        ns = self._times.get(f[c.timestamp])
        if ns is None:
            ns = self._time_ns(f[c.timestamp])
        if ns < 0:
            bad = Reject.BAD_TIMESTAMP if ns == _BAD_TIME else Reject.TIMESTAMP_OUT_OF_RANGE
            return self._reject(bad, line)
        return g, metric, value, ns

    def _gpu(self, f: list[str], line: int) -> int:
        """The GPU of a row whose descriptor is new or needs its labels (`GpuTable.ordinal`)."""
        table = self.table
        bad_labels = table.bad_labels
        g = table.ordinal(self._descriptor(f), f[self.cols.labels_raw])
        if table.bad_labels != bad_labels:
            self.defects.add(Defect.BAD_LABELS, line)
        return g

    def _metric(self, text: str) -> int:
        """Return the ordinal of a metric name seen for the first time (negative: rejected).

        -1: empty; -3: an undecodable byte (checked before the pattern, which refuses U+FFFD
        too, so the reason says the file is not UTF-8); -2: any other name off the pattern.
        """
        name = text.strip()
        if not name:
            ordinal = -1
        elif REPLACEMENT in name:
            ordinal = _BAD_METRIC_ENCODING
        elif not METRIC_NAME.fullmatch(name):
            ordinal = _BAD_METRIC
        else:
            ordinal = self._metric_index.setdefault(name, len(self.metrics))
            if ordinal == len(self.metrics):
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
            ns = ns if 0 < ns <= MAX_TIME_NS else _TIME_OUT_OF_RANGE  # 0: "unknown" when stored
        self._times[text] = ns
        return ns

    def report(self, source: str, elapsed_s: float) -> ParseReport:
        """Return what the parser found so far."""
        return ParseReport(
            source, self.rows_read, self.rejected.issues(), self.defects.issues(), elapsed_s
        )


def _unknown(n: int) -> _Columns:
    """Columns of `n` rows none of which the caches cleared."""
    return [None] * n, [None] * n, [None] * n, [None] * n


def _float_or_nan(text: str) -> float:
    """`float(text)`, or NaN for a text that is no number (the row then takes the slow path)."""
    try:
        return float(text)
    except ValueError:
        return float("nan")

"""The telemetry source: a DCGM exporter CSV, read and validated once into compact columns.

Columns are bound by header name, case-insensitively; a UTF-8 BOM, CRLF line ends and
extra columns are tolerated. Required: `timestamp`, `metric_name`, `gpu_id`, `Hostname`,
`value` (a missing one is a `SourceError` naming it). Optional: `uuid`, `device`,
`modelName`, `container`, `pod`, `namespace`, `labels_raw`; when one is missing or empty,
`uuid`, `device`, `modelName`, `Hostname` and the k8s columns fall back to the same-named
label in `labels_raw`. A known column named twice is a `SourceError` (ambiguous);
repeated unknown columns are ignored.

A GPU's identity is its uuid, else `<Hostname>/<gpu_id>`. Rows are skipped and counted
by `Reject` reason; rows with a bad `timestamp` or `labels_raw` are kept (the point's time
is the processing time) with `source_time_ns = 0` or no labels, counted by `Defect`.
Blank lines are ignored. The reader is strict about quoting: text after a closing quote
rejects the row (`malformed_csv`). Line numbers are the file's (a record's last line).

`read_csv` parses the file once into `SourceRows`; every pass of the streamer reuses it
and calls `record_pass` to count and log (once per reason per pass) what was skipped.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from prometheus_client import REGISTRY, CollectorRegistry

from proto.batch import Gpu
from streamer.columns import Columns, SourceError, bind_columns
from streamer.labels import LabelsError, parse_labels
from streamer.metrics import StreamerMetrics
from streamer.timestamps import parse_timestamp_ns

__all__ = [
    "Defect", "Issue", "ParseReport", "Reject", "SourceError", "SourceRows",
    "describe_gpu", "new_metrics", "parse_csv", "read_csv", "record_pass",
]  # fmt: skip

log = logging.getLogger(__name__)

_NO_LABELS: Mapping[str, str] = {}


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


class Defect(StrEnum):
    """A defect of a row that is kept anyway (the `reason` label of the warnings counter)."""

    BAD_TIMESTAMP = "bad_timestamp"
    BAD_LABELS = "bad_labels"


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


@dataclass(frozen=True)
class SourceRows:
    """The accepted rows in columns, in file order; `gpu[i]`/`metric[i]` index `gpus`/`metrics`.

    `gpus` holds one `Gpu` object per distinct descriptor (identity, placement, labels).
    A pass builds one partition's batches like this (a `BatchBuilder` per partition)::

        part = rows.gpu_partitions(lambda uuid: partition_for_key(uuid, partitions))
        for g, m, value, source_ns in rows.rows():
            if part[g] in owned:
                builder[part[g]].add(rows.gpus[g], rows.metrics[m], now_ns, value, source_ns)
    """

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


class _Parser:
    """Validates rows one by one and interns GPUs, metrics, label sets and timestamps."""

    _TIME_CACHE_MAX = 65_536

    def __init__(self, cols: Columns) -> None:
        self.cols = cols
        self._pad = cols.padded
        self.rows_read = 0
        self.rejected = _Tally()
        self.defects = _Tally()
        self.gpus: list[Gpu] = []
        self.metrics: list[str] = []
        self.gpu: array[int] = array("I")
        self.metric: array[int] = array("I")
        self.value: array[float] = array("d")
        self.source_time_ns: array[int] = array("q")
        self._gpu_ordinal: dict[tuple[object, ...], int] = {}  # -1: no usable identity
        self._metric_ordinal: dict[str, int] = {}
        self._labels: dict[str, tuple[int, Mapping[str, str]] | None] = {"": (0, _NO_LABELS)}
        self._label_set_id: dict[tuple[tuple[str, str], ...], int] = {(): 0}
        self._times: dict[str, int | None] = {}

    def add(self, f: list[str], line: int) -> None:
        """Validate one CSV record ending at `line`; keep it or count why not."""
        self.rows_read += 1
        c = self.cols
        if len(f) != c.width:
            return self.rejected.add(Reject.FIELD_COUNT, line)
        if self._pad:
            f.append("")
        metric = f[c.metric_name].strip()
        if not metric:
            return self.rejected.add(Reject.MISSING_METRIC, line)
        gpu_id = self._gpu_id(f[c.gpu_id], line)
        if gpu_id < 0:
            return None
        ordinal = self._gpu(f, gpu_id, line)
        if ordinal < 0:
            return self.rejected.add(Reject.NO_IDENTITY, line)
        try:
            value = float(f[c.value])
        except ValueError:
            return self.rejected.add(Reject.VALUE_NOT_NUMERIC, line)
        if not math.isfinite(value):
            return self.rejected.add(Reject.VALUE_NOT_FINITE, line)
        self.gpu.append(ordinal)
        self.metric.append(self._metric(metric))
        self.value.append(value)
        self.source_time_ns.append(self._time_ns(f[c.timestamp], line))
        return None

    def _gpu_id(self, text: str, line: int) -> int:
        """Return the host-local GPU index, or -1 after counting why it is unusable."""
        text = text.strip()
        if not text:
            self.rejected.add(Reject.MISSING_GPU_ID, line)
            return -1
        if not text.isascii() or not text.isdigit():
            self.rejected.add(Reject.BAD_GPU_ID, line)
            return -1
        return int(text)

    def _gpu(self, f: list[str], gpu_id: int, line: int) -> int:
        """Return the ordinal of the row's GPU descriptor, or -1 if it has no usable identity."""
        c = self.cols
        labels_id, labels = self._labels_of(f[c.labels_raw], line)
        fields = (f[c.uuid], f[c.hostname], f[c.device], f[c.modelname])
        k8s = (f[c.container], f[c.pod], f[c.namespace])
        key = (fields, gpu_id, k8s, labels_id)
        ordinal = self._gpu_ordinal.get(key)
        if ordinal is None:
            uuid, hostname, device, model = fields
            gpu = describe_gpu(uuid, hostname, gpu_id, device, model, *k8s, labels=labels)
            ordinal = -1 if gpu is None else len(self.gpus)
            if gpu is not None:
                self.gpus.append(gpu)
            self._gpu_ordinal[key] = ordinal
        return ordinal

    def _labels_of(self, raw: str, line: int) -> tuple[int, Mapping[str, str]]:
        """Return (label-set id, labels without `__name__`) of a `labels_raw` field."""
        if raw not in self._labels:
            self._labels[raw] = self._parse_labels(raw)
        parsed = self._labels[raw]
        if parsed is None:
            self.defects.add(Defect.BAD_LABELS, line)
            return 0, _NO_LABELS
        return parsed

    def _parse_labels(self, raw: str) -> tuple[int, Mapping[str, str]] | None:
        """Parse a label string and intern its label set; None if it is malformed."""
        try:
            labels = parse_labels(raw)
        except LabelsError:
            return None
        labels.pop("__name__", None)  # the metric name, not a property of the GPU
        key = tuple(sorted(labels.items()))
        set_id = self._label_set_id.setdefault(key, len(self._label_set_id))
        return set_id, labels

    def _metric(self, name: str) -> int:
        """Return the ordinal of a metric name."""
        ordinal = self._metric_ordinal.get(name)
        if ordinal is None:
            ordinal = self._metric_ordinal[name] = len(self.metrics)
            self.metrics.append(name)
        return ordinal

    def _time_ns(self, text: str, line: int) -> int:
        """Return the CSV timestamp in ns, or 0 after counting a bad one."""
        try:
            ns = self._times[text]
        except KeyError:
            if len(self._times) >= self._TIME_CACHE_MAX:
                self._times.clear()
            ns = self._times[text] = _parse_time(text)
        if ns is None:
            self.defects.add(Defect.BAD_TIMESTAMP, line)
            return 0
        return ns

    def result(self, source: str, elapsed_s: float) -> SourceRows:
        """Return the accepted rows and the report."""
        report = ParseReport(
            source, self.rows_read, self.rejected.issues(), self.defects.issues(), elapsed_s
        )
        return SourceRows(
            tuple(self.gpus), tuple(self.metrics), self.gpu, self.metric, self.value,
            self.source_time_ns, report,
        )  # fmt: skip


def _parse_time(text: str) -> int | None:
    """Return a CSV timestamp in ns, or None if it is not one."""
    try:
        return parse_timestamp_ns(text)
    except ValueError:
        return None


def describe_gpu(
    uuid: str,
    hostname: str,
    gpu_id: int,
    device: str,
    model: str,
    container: str,
    pod: str,
    namespace: str,
    labels: Mapping[str, str] = _NO_LABELS,
) -> Gpu | None:
    """Return the GPU a row describes (blanks filled from its labels); None without identity."""
    uuid = uuid.strip() or labels.get("UUID", "")
    hostname = hostname.strip() or labels.get("Hostname", "")
    if not uuid:
        if not hostname:
            return None
        uuid = f"{hostname}/{gpu_id}"
    return Gpu(
        uuid=uuid,
        hostname=hostname,
        gpu=gpu_id,
        device=device.strip() or labels.get("device", ""),
        model=model.strip() or labels.get("modelName", ""),
        container=container.strip() or labels.get("container", ""),
        pod=pod.strip() or labels.get("pod", ""),
        namespace=namespace.strip() or labels.get("namespace", ""),
        labels=labels,
    )


def parse_csv(lines: Iterable[str], source: str = "<stream>") -> SourceRows:
    """Parse DCGM CSV text (an open file or lines); raise `SourceError` on an unusable header."""
    started = time.perf_counter()
    reader = csv.reader(lines, strict=True)  # a stray quote rejects the row (malformed_csv)
    try:
        header = next(reader)
    except StopIteration:
        raise SourceError(f"{source}: empty file, no CSV header") from None
    except csv.Error as exc:
        raise SourceError(f"{source}: unreadable CSV header: {exc}") from exc
    parser = _Parser(bind_columns(header))
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error:
            parser.rows_read += 1
            parser.rejected.add(Reject.MALFORMED_CSV, reader.line_num)
            continue
        if fields:  # a blank line is no row
            parser.add(fields, reader.line_num)
    return parser.result(source, time.perf_counter() - started)


def read_csv(path: str | os.PathLike[str]) -> SourceRows:
    """Read and validate a DCGM CSV file once; raise `SourceError` if it cannot be used."""
    try:
        # utf-8-sig drops a BOM; newline="" lets the csv module handle CRLF and quoted newlines.
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            rows = parse_csv(f, os.fspath(path))
    except OSError as exc:
        raise SourceError(f"cannot read {os.fspath(path)!r}: {exc}") from exc
    r = rows.report
    log.info(
        "source parsed",
        extra={
            "source": r.source, "rows_read": r.rows_read, "rows_accepted": len(rows),
            "rows_rejected": r.rows_rejected, "gpus": len(rows.gpus),
            "metrics": len(rows.metrics), "elapsed_s": round(r.elapsed_s, 3),
        },
    )  # fmt: skip
    return rows


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

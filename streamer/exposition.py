"""Parsing the Prometheus text exposition format as dcgm-exporter writes it, one scrape at a time.

A sample line is `name{label="value",...} value [timestamp_ms]`. dcgm-exporter writes the
same label set for every family of a GPU (`gpu`, `UUID`, `device`, `modelName`,
`Hostname`, `DCGM_FI_DRIVER_VERSION`, `container`, `namespace`, `pod`, ...), so the label
text of a line is a cache key: it is parsed once (`streamer.labels`, escapes included)
and then found with one dict lookup. The line itself is cut at its first `{` (a metric
name holds none) and its last `}` (the value and timestamp hold none), so braces,
commas and escaped quotes inside label values are safe. Measured in
`bench/scrape_bench.py` against `prometheus_client.parser`, which the tests use as
the reference on the same text.

`# HELP`, `# TYPE` and other comments are skipped; a family the streamer does not know is
just a metric name (the metric set is open). What a sample cannot be is counted by
`SampleReject` reason and skipped: no labels identifying a GPU, a malformed line or
label set, a value that is not a finite number (dcgm-exporter writes NaN for a field it
cannot read), a timestamp outside what a point's int64 nanoseconds hold (before the epoch
or after 2262: the CSV path's `timestamp_out_of_range` and bound).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from enum import StrEnum

from streamer.labels import LabelsError, parse_labels
from streamer.rows import MAX_TIME_NS

MAX_TIMESTAMP_MS = MAX_TIME_NS // 1_000_000  # the last sample time (ms) a point can carry


class SampleReject(StrEnum):
    """Why a sample of a scrape was skipped (the `reason` label)."""

    MALFORMED_LINE = "malformed_line"
    BAD_LABELS = "bad_labels"
    NO_GPU = "no_gpu"
    BAD_GPU_FIELD = "bad_gpu_field"  # a uuid, Hostname, ... no store accepts as a tag
    BAD_METRIC_NAME = "bad_metric_name"  # a name the REST API could not select (too long)
    VALUE_NOT_NUMERIC = "value_not_numeric"
    VALUE_NOT_FINITE = "value_not_finite"
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"  # as the CSV path: (0, MAX_TIME_NS] in ns
    BAD_ENCODING = "bad_encoding"  # a GPU's uuid, hostname, ... held bytes that are no UTF-8
    BAD_UUID = "bad_uuid"  # a uuid the REST API cannot name (`streamer.gpus.uuid_addressable`)
    DUPLICATE_SAMPLE = "duplicate_sample"  # a series' second sample in one page (the first kept)


Sample = tuple[str, str, float, int | None]  # name, label text (with braces), value, ts ms
Key = tuple[int, int]  # what a sample line's name and labels stand for: (GPU, metric) ordinals
Resolve = Callable[[str, str], "Key | SampleReject"]
_MISS = object()


def samples(text: str, rejected: Callable[[SampleReject], None]) -> Iterator[Sample]:
    """Yield (name, label text, value, timestamp ms or None) of every sample line of `text`."""
    for line in text.split("\n"):
        found = sample(line, rejected)
        if found is not None:
            yield found


def sample(line: str, rejected: Callable[[SampleReject], None]) -> Sample | None:
    """The sample of one line; None for a comment, a blank or a rejected line (counted)."""
    if not line or line[0] == "#":
        return None
    open_at = line.find("{")
    if open_at < 0:
        name, _, rest = line.partition(" ")
        labels = ""
    else:
        close_at = line.rfind("}")
        if close_at < open_at:
            rejected(SampleReject.MALFORMED_LINE)
            return None
        name, labels, rest = line[:open_at], line[open_at : close_at + 1], line[close_at + 1 :]
    fields = rest.split()
    if not name or not 1 <= len(fields) <= 2:
        if line.strip():
            rejected(SampleReject.MALFORMED_LINE)
        return None
    try:
        value = float(fields[0])
        ts = int(fields[1]) if len(fields) == 2 else None
    except ValueError:
        rejected(SampleReject.VALUE_NOT_NUMERIC)
        return None
    if not math.isfinite(value):
        rejected(SampleReject.VALUE_NOT_FINITE)
        return None
    # Refused here, not clamped or replaced: a time in ns past int64 cannot be encoded (it
    # crashed the streamer), and a sample's own time is never silently swapped for another.
    if ts is not None and not 0 < ts <= MAX_TIMESTAMP_MS:
        rejected(SampleReject.TIMESTAMP_OUT_OF_RANGE)
        return None
    return name.strip(), labels, value, ts


class PageReader:
    """Reads the successive pages of one target; lines seen before take a fast path.

    An exporter writes the same lines page after page; only the value changes. So the
    text of a line before its last blank (`name{labels}`, or a comment's first words) is
    a key, remembered with what `sample` and `resolve` made of it: a later line with that
    key is one `rpartition`, one dict lookup and one `float`. A key is remembered only
    from a line that `sample` read as a whole sample without a timestamp; any line the
    fast path cannot read exactly as `sample` would (a timestamp, a value `float` refuses)
    goes to `sample`, so both paths give the same result (the tests hold them to
    `prometheus_client`'s parser). Keys are bounded (`max_keys`; then forgotten at once).
    """

    def __init__(self, resolve: Resolve, max_keys: int = 10_000) -> None:
        self._resolve = resolve
        self._known: dict[str, Key | SampleReject | None] = {}
        self.max_keys = max_keys

    def read(
        self, text: str, gpus: list[int], metrics: list[int], values: list[float],
        rejected: Callable[[SampleReject], None],
    ) -> int | None:  # fmt: skip
        """Append the page's samples to the columns; return the newest timestamp (ms) or None.

        None, not 0, when no sample has one: 0 is a time like any other (the epoch).
        """
        known, isfinite, newest = self._known, math.isfinite, None
        for line in text.split("\n"):
            head, _, tail = line.rpartition(" ")
            hit = known.get(head, _MISS)
            if hit is None:
                continue  # a comment
            if hit is not _MISS:
                try:
                    value = float(tail)
                except ValueError:
                    hit = _MISS
                else:
                    if not isfinite(value):
                        rejected(SampleReject.VALUE_NOT_FINITE)
                    elif type(hit) is tuple:
                        gpus.append(hit[0])
                        metrics.append(hit[1])
                        values.append(value)
                    else:
                        rejected(hit)  # type: ignore[arg-type]
                    continue
            ts = self._slow(line, head, tail, (gpus, metrics, values), rejected)
            if ts is not None and (newest is None or ts > newest):
                newest = ts
        return newest

    def _slow(
        self, line: str, head: str, tail: str,
        into: tuple[list[int], list[int], list[float]], rejected: Callable[[SampleReject], None],
    ) -> int | None:  # fmt: skip
        """Read a line `sample`'s way, remember its key if it may be; its timestamp or None."""
        if line[:1] == "#" and head:
            self._remember(head, None)
            return None
        found = sample(line, rejected)
        if found is None:
            return None
        name, labels, value, ts = found
        meaning = self._resolve(name, labels)
        # Remembered only when `head` is the name and label text (plus blanks) and `tail`
        # the value: then `sample` reads every line `head + " " + number` as this sample
        # with that number (no brace, blank or second field can hide in a number).
        prefix = line[: line.rfind("}") + 1] if labels else line.partition(" ")[0]
        if ts is None and tail.strip() and head.rstrip() == prefix:
            self._remember(head, meaning)
        if isinstance(meaning, SampleReject):
            rejected(meaning)
            return None
        into[0].append(meaning[0])
        into[1].append(meaning[1])
        into[2].append(value)
        return ts

    def _remember(self, head: str, meaning: Key | SampleReject | None) -> None:
        if len(self._known) >= self.max_keys:
            self._known.clear()
        self._known[head] = meaning


def label_map(text: str) -> dict[str, str]:
    """The labels of a sample's label text; `LabelsError` if malformed."""
    if not text:
        return {}
    if not (text.startswith("{") and text.endswith("}")):
        raise LabelsError(f"not a label set: {text[:40]!r}")
    return parse_labels(text)

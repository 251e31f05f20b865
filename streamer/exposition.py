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
cannot read).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from enum import StrEnum

from streamer.labels import LabelsError, parse_labels


class SampleReject(StrEnum):
    """Why a sample of a scrape was skipped (the `reason` label)."""

    MALFORMED_LINE = "malformed_line"
    BAD_LABELS = "bad_labels"
    NO_GPU = "no_gpu"
    VALUE_NOT_NUMERIC = "value_not_numeric"
    VALUE_NOT_FINITE = "value_not_finite"


Sample = tuple[str, str, float, int | None]  # name, label text (with braces), value, ts ms


def samples(text: str, rejected: Callable[[SampleReject], None]) -> Iterator[Sample]:
    """Yield (name, label text, value, timestamp ms or None) of every sample line of `text`."""
    for line in text.split("\n"):
        if not line or line[0] == "#":
            continue
        open_at = line.find("{")
        if open_at < 0:
            name, _, rest = line.partition(" ")
            labels = ""
        else:
            close_at = line.rfind("}")
            if close_at < open_at:
                rejected(SampleReject.MALFORMED_LINE)
                continue
            name, labels, rest = line[:open_at], line[open_at : close_at + 1], line[close_at + 1 :]
        fields = rest.split()
        if not name or not 1 <= len(fields) <= 2:
            if line.strip():
                rejected(SampleReject.MALFORMED_LINE)
            continue
        try:
            value = float(fields[0])
            ts = int(fields[1]) if len(fields) == 2 else None
        except ValueError:
            rejected(SampleReject.VALUE_NOT_NUMERIC)
            continue
        if not math.isfinite(value):
            rejected(SampleReject.VALUE_NOT_FINITE)
            continue
        yield name.strip(), labels, value, ts


def label_map(text: str) -> dict[str, str]:
    """The labels of a sample's label text; `LabelsError` if malformed."""
    if not text:
        return {}
    if not (text.startswith("{") and text.endswith("}")):
        raise LabelsError(f"not a label set: {text[:40]!r}")
    return parse_labels(text)

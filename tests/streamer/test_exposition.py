"""The exposition parser on dcgm-exporter text, checked against prometheus_client's parser."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gputel.fake_exporter import Node
from streamer.exposition import SampleReject, label_map, samples
from streamer.labels import LabelsError

# data/dcgm_exporter.txt: as dcgm-exporter 3.x writes it (HELP/TYPE, label order, empty
# k8s labels), plus the hard cases: escapes and braces/commas inside values, NaN, explicit
# timestamps, other families.
REAL = (Path(__file__).parent / "data" / "dcgm_exporter.txt").read_text()


def parse(text: str) -> tuple[list, list[SampleReject]]:
    rejected: list[SampleReject] = []
    return list(samples(text, rejected.append)), rejected


def reference(text: str) -> list[tuple[str, dict[str, str], float, int | None]]:
    """prometheus_client's reading of the same text (finite values only)."""
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if math.isfinite(s.value):
                ts = None if s.timestamp is None else round(float(s.timestamp) * 1000)
                out.append((s.name, dict(s.labels), s.value, ts))
    return out


def test_real_text_matches_the_reference_parser_with_escapes_nan_and_timestamps() -> None:
    got, rejected = parse(REAL)
    mine = [(name, label_map(labels), value, ts) for name, labels, value, ts in got]
    assert mine == reference(REAL)
    assert rejected == [SampleReject.VALUE_NOT_FINITE, SampleReject.VALUE_NOT_FINITE]  # NaN, +Inf
    pod = label_map(got[1][1])["pod"]
    assert pod == 'llama-{7}, "quoted" \\ path\nline'
    assert got[2][3] == 1752871350123  # the exporter's own sample time, in ms
    names = {name for name, *_ in got}
    assert "process_open_fds" in names and "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE" in names


def test_fake_exporter_pages_parse_like_the_reference() -> None:
    text = Node("node", 3, 8, seed=1).page(1_752_871_350.0)
    got, rejected = parse(text)
    assert len(got) == 80 and rejected == []
    mine = [(n, label_map(lab), v, ts) for n, lab, v, ts in got]
    assert mine == reference(text)
    assert len({lab for _, lab, _, _ in got}) == 8  # one label text per GPU, for every field


@pytest.mark.parametrize(
    ("line", "reason"),
    [('M{gpu="0"', SampleReject.MALFORMED_LINE),
     ('M{gpu="0"} ', SampleReject.MALFORMED_LINE),
     ('M{gpu="0"} 1 2 3', SampleReject.MALFORMED_LINE),
     ('M{gpu="0"} abc', SampleReject.VALUE_NOT_NUMERIC),
     ('M{gpu="0"} 1 1.5', SampleReject.VALUE_NOT_NUMERIC),
     ('M{gpu="0"} -Inf', SampleReject.VALUE_NOT_FINITE)],
)  # fmt: skip
def test_bad_lines_are_counted_by_reason_and_the_rest_goes_on(
    line: str, reason: SampleReject
) -> None:
    got, rejected = parse(f'{line}\nM{{gpu="1"}} 2\n')
    assert rejected == [reason]
    assert [(n, lab, v) for n, lab, v, _ in got] == [("M", '{gpu="1"}', 2.0)]


def test_malformed_label_sets_raise() -> None:
    with pytest.raises(LabelsError):
        label_map('{gpu="0" UUID="x"}')
    with pytest.raises(LabelsError):
        label_map('gpu="0"')
    assert label_map("") == {}

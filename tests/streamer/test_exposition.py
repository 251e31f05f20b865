"""The exposition parser on dcgm-exporter text, checked against prometheus_client's parser."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from gputel.fake_exporter import Node
from streamer.exposition import PageReader, SampleReject, label_map, samples
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


@pytest.mark.parametrize(
    "ts", ["9999999999999", "9223372036855", "-1", "-9999999999999", "99999999999999999999"]
)
def test_a_timestamp_no_point_can_hold_is_refused_and_counted(ts: str) -> None:
    """After 2262 (int64 ns overflow: the streamer crashed encoding it) or before the epoch:
    the sample is refused under the CSV path's reason, and the page's time comes from the
    rest; both paths of the reader agree."""
    text = f'M{{gpu="0"}} 1 {ts}\nM{{gpu="1"}} 2 9223372036854\nM{{gpu="2"}} 3\n'
    got, rejected = parse(text)
    assert rejected == [SampleReject.TIMESTAMP_OUT_OF_RANGE]
    assert [(lab, ts) for _, lab, _, ts in got] == [
        ('{gpu="1"}', 9223372036854),
        ('{gpu="2"}', None),
    ]
    runs, _ = read_twice(text)
    for rows, rejects, newest in runs:
        assert [g for g, _, _ in rows] == [1, 2] and rejects == [
            SampleReject.TIMESTAMP_OUT_OF_RANGE
        ]
        assert newest == 9223372036854  # the last ms whose ns an int64 holds


def test_a_timestamp_of_zero_is_refused_not_taken_for_its_absence() -> None:
    """0 is no sample time (a stored source time of 0 means "unknown"), and no page time."""
    reader = PageReader(lambda _n, _lab: (0, 0))
    rejected: list[SampleReject] = []
    assert reader.read('M{gpu="0"} 1 0\n', [], [], [], rejected.append) is None
    assert rejected == [SampleReject.TIMESTAMP_OUT_OF_RANGE]
    assert reader.read('M{gpu="0"} 1 1\n', [], [], [], print) == 1
    assert reader.read('M{gpu="0"} 1\n', [], [], [], print) is None


def test_malformed_label_sets_raise() -> None:
    with pytest.raises(LabelsError):
        label_map('{gpu="0" UUID="x"}')
    with pytest.raises(LabelsError):
        label_map('gpu="0"')
    assert label_map("") == {}


# ---- PageReader: the fast path for lines seen before --------------------------------------


def read_twice(text: str) -> tuple[list, list]:
    """What a PageReader makes of `text` the first time (slow path) and the second (fast)."""
    seen: dict[tuple[str, str], int] = {}

    def resolve(name: str, labels: str):
        try:
            gpu = label_map(labels).get("gpu")
        except LabelsError:
            return SampleReject.BAD_LABELS
        if gpu is None:
            return SampleReject.NO_GPU
        return int(gpu) if gpu.isdigit() else -1, seen.setdefault((name, labels), len(seen))

    reader, runs = PageReader(resolve), []
    for _ in range(2):
        gpus, metrics, values, rejected = [], [], [], []
        newest = reader.read(text, gpus, metrics, values, rejected.append)
        runs.append((list(zip(gpus, metrics, values, strict=True)), rejected, newest))
    expected_rejects: list[SampleReject] = []
    expected = []
    for name, labels, value, _ts in samples(text, expected_rejects.append):
        meaning = resolve(name, labels)
        if isinstance(meaning, SampleReject):
            expected_rejects.append(meaning)
        else:
            expected.append((*meaning, value))
    return runs, [expected, sorted(expected_rejects)]


def test_page_reader_reads_real_text_like_the_full_parser_twice() -> None:
    runs, (expected, expected_rejects) = read_twice(REAL)
    for got, rejected, newest in runs:
        assert got == expected and sorted(rejected) == expected_rejects
        assert newest == 1752871350123  # the exporter's own sample time, in ms


def test_page_reader_fast_path_never_reads_a_different_line_the_same_way() -> None:
    """Lines that share the text before their last blank with a remembered line but are
    not that line with another number: each must read as the full parser reads it."""
    first = 'M{gpu="0",a="x y"}5\nM{gpu="0"} 5 \nN{gpu="1"} 2\nP 3\n'
    then = 'M{gpu="0",a="x 7\nM{gpu="0"} 5 7\nN{gpu="1"} 2 1700000000000\nP 4\tx\nN{gpu="1"} NaN\n'
    seen: dict[str, int] = {}
    reader = PageReader(lambda n, lab: (0, seen.setdefault(n + lab, len(seen))))
    for text in (first, then, first):
        got: list = [[], [], []]
        rejected: list[SampleReject] = []
        newest = reader.read(text, *got, rejected.append)
        want_rejects: list[SampleReject] = []
        want = [(0, seen.setdefault(n + lab, len(seen)), v)
                for n, lab, v, _ in samples(text, want_rejects.append)]  # fmt: skip
        assert list(zip(*got, strict=True)) == want and rejected == want_rejects, text
        assert newest == (1700000000000 if text == then else None)


@given(st.lists(st.sampled_from([
    '# HELP M help (in %).', "# TYPE M gauge", "", " ", 'M{gpu="0"} 1', 'M{gpu="0"}  2',
    'M{gpu="0"} 3 1700000000001', 'M{gpu="1",pod="a}, b"} 4', 'M{gpu="1",pod="a}, b"} x',
    'M{gpu="0"} NaN', 'M{gpu="0"} +Inf', "M 5", "M  6", "M", 'M{gpu="0"', 'M{gpu="x"} 7',
    'M{pod="p"} 8', 'M{gpu="0" pod="p"} 9', 'M{gpu="0"}\t10', 'M{gpu="2",a="1 2"}3',
    'M{gpu="2",a="1 4', 'N{gpu="0"} 1e3', 'N{gpu="0"} 1_0', 'N{gpu="0"} 5\r',
]), max_size=30))  # fmt: skip
def test_page_reader_equals_the_full_parser_on_any_mix_of_lines(lines: list[str]) -> None:
    runs, (expected, expected_rejects) = read_twice("\n".join(lines))
    for got, rejected, _newest in runs:
        assert got == expected and sorted(rejected) == expected_rejects

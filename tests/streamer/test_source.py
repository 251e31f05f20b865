"""Reading and validating a DCGM CSV: every trait of real exports, every rejection reason."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamer.source import Defect, Issue, Reject, SourceError, SourceRows, parse_csv, read_csv
from tests.streamer.dcgm_fixture import (
    HEADER,
    MODEL,
    UUID0,
    UUID1,
    csv_text,
    labels_raw,
    quoted,
    row,
    write_csv,
)  # fmt: skip


def parse(text: str) -> SourceRows:
    return parse_csv(io.StringIO(text, newline=""), "fixture.csv")


def test_quoted_fields_with_commas_and_doubled_quotes() -> None:
    pod = "llama, the trainer"
    raw = labels_raw(container="trainer", namespace="ml", pod=pod)
    rows = parse(csv_text([row(pod=pod, container="trainer", namespace="ml", labels_raw=raw)]))
    assert '""' in csv_text([row(labels_raw=raw)])  # the fixture really doubles the quotes
    (g,) = rows.gpus
    assert (g.uuid, g.hostname, g.gpu, g.device, g.model) == (UUID0, "h1", 0, "nvidia0", MODEL)
    assert (g.container, g.pod, g.namespace) == ("trainer", pod, "ml")
    assert g.labels["pod"] == pod and g.labels["instance"] == "h1:9400"
    assert "__name__" not in g.labels  # the metric, not a GPU property
    assert list(rows.rows()) == [(0, 0, 42.0, 1_752_871_350 * 10**9)]
    assert rows.metrics == ("DCGM_FI_DEV_GPU_UTIL",)


def test_bom_and_crlf(tmp_path: Path) -> None:
    text = csv_text([row(), row(value="43.5")], eol="\r\n")
    rows = read_csv(write_csv(tmp_path / "bom.csv", text, bom=True))
    assert list(rows.value) == [42.0, 43.5] and rows.report.rows_rejected == 0
    assert rows.gpus[0].labels["modelName"] == MODEL  # no stray \r anywhere


def test_header_bound_by_name_case_insensitive_in_any_order_with_extra_columns() -> None:
    header = ["VALUE", "extra", "gpu_id", "HOSTNAME", "Metric_Name", "uuid", "Timestamp", "more"]
    rows = parse(csv_text([row(extra="x", more="y", value="7")], header=header))
    assert list(rows.value) == [7.0] and rows.gpus[0].uuid == UUID0


def test_missing_optional_columns_fall_back_to_labels_then_hostname_slash_gpu_id() -> None:
    header = ["timestamp", "metric_name", "gpu_id", "Hostname", "value", "labels_raw"]
    with_labels = row(labels_raw=labels_raw(uuid=UUID1))
    without = row(gpu_id="3", labels_raw="")
    rows = parse(csv_text([with_labels, without], header=header))
    assert [g.uuid for g in rows.gpus] == [UUID1, "h1/3"]
    assert rows.gpus[0].device == "nvidia0" and rows.gpus[0].model == MODEL
    assert rows.gpus[1].device == "" and dict(rows.gpus[1].labels) == {}


@pytest.mark.parametrize("missing", ["timestamp", "metric_name", "gpu_id", "Hostname", "value"])
def test_missing_required_column_is_an_error_naming_it(missing: str) -> None:
    header = [h for h in HEADER if h != missing]
    with pytest.raises(SourceError, match=f"required column.*{missing.lower()}"):
        parse(csv_text([row()], header=header))


def test_a_metric_name_the_api_could_not_select_is_rejected_and_counted() -> None:
    """'gpu util' was stored and listed by /api/v1/metrics, while `?metric=gpu util` is a 400."""
    from gateway.params import METRIC_PATTERN
    from streamer.rows import METRIC_NAME

    assert "^" + METRIC_NAME.pattern + "$" == METRIC_PATTERN  # the same rule on both sides
    names = ["gpu util", 'DCGM_FI_DEV_GPU_UTIL"x', "DCGM_FI_ÜTIL", "9LIVES", "M" * 257]
    good = ["DCGM_FI_DEV_GPU_UTIL", "dcgm:ratio", "a.b-c", "M" * 256]
    rows = parse(csv_text([row(metric_name=n) for n in [*names, *good]]))
    assert list(rows.metrics) == good
    assert rows.report.rejected[Reject.BAD_METRIC_NAME].count == len(names)


def test_a_binary_file_is_refused_in_a_short_readable_message(tmp_path: Path) -> None:
    """Its "header" used to be echoed whole: kilobytes of control characters to the terminal."""
    blob = bytes(range(256)) * 40  # NUL, ESC, newlines, invalid UTF-8
    path = tmp_path / "export.csv"
    path.write_bytes(blob.replace(b"\n", b"").replace(b"\r", b""))
    with pytest.raises(SourceError, match="required column") as exc:
        read_csv(path)
    message = str(exc.value)
    assert len(message) < 500 and "is this a DCGM exporter CSV?" in message
    assert message.isprintable(), message


def test_duplicate_known_column_is_an_error_unknown_duplicates_are_ignored() -> None:
    with pytest.raises(SourceError, match="'Value' appears twice"):
        parse(csv_text([row()], header=[*HEADER, "Value"]))
    rows = parse(csv_text([row(note="a")], header=[*HEADER, "note", "note"]))
    assert len(rows) == 1


def test_empty_file_and_unreadable_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="empty file"):
        parse("")
    with pytest.raises(SourceError, match="cannot read"):
        read_csv(tmp_path / "absent.csv")


BAD_ROWS = {
    Reject.MISSING_GPU_ID: row(gpu_id=""),
    Reject.BAD_GPU_ID: row(gpu_id="gpu0"),
    Reject.NO_IDENTITY: row(uuid="", Hostname="", labels_raw=""),
    Reject.MISSING_METRIC: row(metric_name=" "),
    Reject.BAD_METRIC_NAME: row(metric_name="gpu util"),
    Reject.VALUE_NOT_NUMERIC: row(value="n/a"),
    Reject.VALUE_NOT_FINITE: row(value="NaN"),
}


@pytest.mark.parametrize("reason", list(BAD_ROWS))
def test_each_rejection_reason_skips_and_counts_the_row(reason: Reject) -> None:
    rows = parse(csv_text([row(), BAD_ROWS[reason], row(value="1")]))
    assert list(rows.value) == [42.0, 1.0]
    issue = rows.report.rejected[reason]
    assert (issue.count, issue.first_line) == (1, 3)
    assert rows.report.rows_read == 3 and len(rows.report.rejected) == 1


@pytest.mark.parametrize(
    ("value", "reason"),
    [("", Reject.VALUE_NOT_NUMERIC), ("12abc", Reject.VALUE_NOT_NUMERIC),
     ("nan", Reject.VALUE_NOT_FINITE), ("inf", Reject.VALUE_NOT_FINITE),
     ("-Infinity", Reject.VALUE_NOT_FINITE), ("1e999", Reject.VALUE_NOT_FINITE)],
)  # fmt: skip
def test_values_that_are_not_finite_numbers(value: str, reason: Reject) -> None:
    rows = parse(csv_text([row(value=value)]))
    assert len(rows) == 0 and rows.report.rejected[reason].count == 1


def test_wrong_field_count_and_malformed_csv_rows_do_not_stop_the_read() -> None:
    good = quoted([row()[h] for h in HEADER])
    short, long = quoted(["2025-07-18T20:42:30Z", "M", "0"]), good + ',"surplus"'
    broken = good.replace('"42"', '"42"x')  # text after a closing quote
    text = "\n".join([quoted(HEADER), short, good, long, broken, good]) + "\n"
    rows = parse(text)
    assert len(rows) == 2 and rows.report.rows_read == 5
    assert rows.report.rejected[Reject.FIELD_COUNT].count == 2
    assert rows.report.rejected[Reject.FIELD_COUNT].first_line == 2
    assert rows.report.rejected[Reject.MALFORMED_CSV].first_line == 5


@pytest.mark.parametrize(
    ("timestamp", "reason"),
    [("yesterday", Reject.BAD_TIMESTAMP), ("2025-13-01T00:00:00Z", Reject.BAD_TIMESTAMP),
     ("1969-12-31T23:59:59Z", Reject.TIMESTAMP_OUT_OF_RANGE),
     ("2262-04-12T00:00:00Z", Reject.TIMESTAMP_OUT_OF_RANGE),
     ("2299-01-01T00:00:00Z", Reject.TIMESTAMP_OUT_OF_RANGE),
     ("99999999999", Reject.TIMESTAMP_OUT_OF_RANGE), ("-1", Reject.TIMESTAMP_OUT_OF_RANGE),
     ("10000-01-01T00:00:00Z", Reject.BAD_TIMESTAMP)],
)  # fmt: skip
def test_a_timestamp_that_does_not_fit_rejects_the_row_and_the_stream_goes_on(
    timestamp: str, reason: Reject
) -> None:
    rows = parse(csv_text([row(timestamp=timestamp), row(), row(timestamp=timestamp)]))
    assert list(rows.source_time_ns) == [1_752_871_350 * 10**9]
    issue = rows.report.rejected[reason]
    assert (issue.count, issue.first_line) == (2, 2) and rows.report.rows_rejected == 2


def test_the_first_and_last_instants_a_point_can_carry_are_kept() -> None:
    """The epoch itself is refused: a stored source time of 0 means "unknown" (the API showed
    such a row's `source_time` as null)."""
    edge = [
        "1970-01-01T00:00:00Z",
        "1970-01-01T00:00:00.000000001Z",
        "2262-04-11T23:47:16.854775807Z",
    ]
    rows = parse(csv_text([row(timestamp=t) for t in edge]))
    assert list(rows.source_time_ns) == [1, 2**63 - 1]
    assert rows.report.rejected[Reject.TIMESTAMP_OUT_OF_RANGE].count == 1


def test_bad_labels_keep_the_row_and_count_a_defect_once_per_gpu() -> None:
    bad = row(labels_raw='UUID="x" job="y"')
    rows = parse(csv_text([bad, bad, row(uuid=UUID1, labels_raw="")]))
    assert rows.report.defects[Defect.BAD_LABELS] == Issue("bad_labels", 1, 2)
    assert dict(rows.gpus[rows.gpu[0]].labels) == {} and rows.report.rows_rejected == 0
    assert len(rows) == 3


def test_gpu_id_repeats_across_hosts_identity_is_the_uuid() -> None:
    a = row(Hostname="h1", uuid=UUID0)
    b = row(Hostname="h2", uuid=UUID1, labels_raw=labels_raw(UUID1, "h2"))
    rows = parse(csv_text([a, b, a, b]))
    assert [g.uuid for g in rows.gpus] == [UUID0, UUID1]
    assert {g.gpu for g in rows.gpus} == {0} and list(rows.gpu) == [0, 1, 0, 1]


def test_k8s_columns_empty_on_most_rows_filled_on_some() -> None:
    placed = row(gpu_id="1", uuid=UUID1, container="c", pod="p", namespace="n")
    rows = parse(csv_text([row(), placed]))
    assert [(g.container, g.pod, g.namespace) for g in rows.gpus] == [("", "", ""), ("c", "p", "n")]


def test_one_gpu_object_per_descriptor_and_metrics_interned() -> None:
    r = [row(metric_name=m, labels_raw=labels_raw().replace("GPU_UTIL", m)) for m in "ABAB"]
    rows = parse(csv_text(r))
    assert len(rows.gpus) == 1 and rows.metrics == ("A", "B")
    assert list(rows.metric) == [0, 1, 0, 1]


def test_blank_lines_ignored_and_quoted_newlines_keep_line_numbers() -> None:
    multi = row(pod="two\nlines")
    text = csv_text([multi, row(value="x")]).replace('\n"2025', '\n\n"2025', 1)
    rows = parse(text)
    # A newline is a control character: no store takes it in a tag, so the row is refused
    # here, by its record's last line (not its whole batch by the collector).
    assert rows.report.rejected[Reject.BAD_GPU_FIELD].first_line == 4
    assert rows.report.rejected[Reject.VALUE_NOT_NUMERIC].first_line == 5


def test_gpu_partitions_maps_each_gpu_ordinal() -> None:
    b = row(Hostname="h2", uuid=UUID1, labels_raw=labels_raw(UUID1, "h2"))
    rows = parse(csv_text([row(), b]))
    assert rows.gpu_partitions(lambda uuid: 7 if uuid == UUID1 else 3) == [3, 7]


def test_bytes_that_are_no_utf8_in_a_gpu_field_or_metric_name_reject_the_row(
    tmp_path: Path,
) -> None:
    """`GPU-\xff` and `GPU-\xfe` both read as U+FFFD: kept, the two GPUs became one."""
    good = row(uuid=UUID1, value="1")
    bad = [row(uuid="GPU-@ff", gpu_id="0"), row(uuid="GPU-@fe", gpu_id="1"),
           row(Hostname="h@ff"), row(metric_name="DCGM_FI_@ff")]  # fmt: skip
    text = csv_text([good, *bad]).encode("utf-8")
    path = tmp_path / "latin.csv"
    path.write_bytes(text.replace(b"@ff", b"\xff").replace(b"@fe", b"\xfe"))
    rows = read_csv(path)
    assert list(rows.value) == [1.0] and [g.uuid for g in rows.gpus] == [UUID1]
    issue = rows.report.rejected[Reject.BAD_ENCODING]
    assert (issue.count, issue.first_line) == (4, 3)
    assert len(rows.report.rejected) == 1


@pytest.mark.parametrize(
    "uuid", [".", "..", "GPU-a/telemetry", "a//b", "/GPU-a", "GPU-a/", "h/../GPU-a", "h/./a"]
)
def test_a_uuid_the_rest_api_cannot_name_rejects_the_row(uuid: str) -> None:
    """`..` made the web view ask for /api/v1/gpus/ (browsers resolve dot segments) and lose
    the fleet page; `X/telemetry` answered GPU X's telemetry. Such rows are `bad_uuid`."""
    fallback = row(uuid="", Hostname="h/..", labels_raw="")  # identity "h/../0"
    last = row(uuid="GPU-a/telemetry2")
    rows = parse(csv_text([row(uuid=UUID1), row(uuid=uuid), fallback, last]))
    assert [g.uuid for g in rows.gpus] == [UUID1, "GPU-a/telemetry2"]
    issue = rows.report.rejected[Reject.BAD_UUID]
    assert (issue.count, issue.first_line) == (2, 3)
    assert len(rows.report.rejected) == 1


def test_a_read_error_is_a_source_error_naming_the_file() -> None:
    """/proc/self/mem opens and then refuses the read: a traceback, before."""
    with pytest.raises(SourceError, match="cannot read '/proc/self/mem'"):
        read_csv("/proc/self/mem")

    def failing() -> Iterator[str]:
        yield from csv_text([row(), row()]).splitlines(keepends=True)
        raise OSError(5, "Input/output error")

    with pytest.raises(SourceError, match=r"cannot read 'dcgm.csv' after line 3: .*Input/output"):
        parse_csv(failing(), "dcgm.csv")


def test_a_malformed_record_is_reported_at_its_first_line() -> None:
    """An unterminated quote on line 3 runs on into line 4, where the reader gives up."""
    good = quoted([row()[h] for h in HEADER])
    unterminated = good[:-1]  # the last field's closing quote is missing
    text = "\n".join([quoted(HEADER), good, unterminated, good, good]) + "\n"
    rows = parse(text)
    assert len(rows) == 2 and rows.report.rows_read == 3
    assert rows.report.rejected[Reject.MALFORMED_CSV] == Issue("malformed_csv", 1, 3)

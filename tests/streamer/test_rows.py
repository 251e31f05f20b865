"""The parser's chunked path gives exactly what validating the rows one by one gives.

`RowParser.add_rows` clears most rows with C-level lookups over a whole chunk and sends
only the others through the per-row checks. The oracle here is the same file read with
every row sent through the per-row checks: rows, ordinals, partitions, rejection
reasons with their first lines and defects must be identical, on a real-format export
with every kind of bad row spread over chunks whose other rows are all known.
"""

from __future__ import annotations

import io
import random
from array import array
from typing import Any

import pytest

from proto.batch import Gpu
from proto.codec import decode
from scripts import gen_dcgm
from streamer.columns import Columns
from streamer.encode import encode_rows
from streamer.gpus import GpuTable
from streamer.rows import RowParser, _Columns, _unknown
from streamer.source import RowBlock, blocks
from tests.streamer.dcgm_fixture import HEADER, quoted


class RowByRow(RowParser):
    """The oracle: no cache lookups, every row takes the per-row path."""

    def _lookup(self, rows: list[list[str]]) -> _Columns:
        return _unknown(len(rows))


def _bad(fields: list[str], kind: str) -> str:
    """One bad (or odd but valid) record made from a good one's fields."""
    f = dict(zip(HEADER, fields, strict=True))
    changes: dict[str, dict[str, str]] = {
        "missing_metric": {"metric_name": " "},
        "bad_metric_name": {"metric_name": 'gpu util"%'},
        "missing_gpu_id": {"gpu_id": ""},
        "bad_gpu_id": {"gpu_id": "x1"},
        "no_identity": {"uuid": "", "Hostname": "", "labels_raw": ""},
        "value_not_numeric": {"value": "n/a"},
        "value_not_finite": {"value": "inf"},
        "value_nan": {"value": "NaN"},
        "bad_timestamp": {"timestamp": "yesterday"},
        "timestamp_out_of_range": {"timestamp": "1969-12-31T23:59:59Z"},
        "bad_labels": {"uuid": "GPU-new-" + f["uuid"][-6:], "labels_raw": 'a="1",b'},
        "new_gpu": {"uuid": "GPU-late-" + f["uuid"][-6:]},
        "new_metric": {"metric_name": "DCGM_FI_DEV_LATE"},
        "new_time": {"timestamp": "2025-07-18T20:43:01.5Z"},
        # A control character (here a quoted newline) or a backslash in a descriptor, or an
        # over-long one, is no storable tag: the row is refused in the streamer, so its batch
        # is not refused whole by the collector.
        "quoted_newline": {"pod": "a\npod", "uuid": "GPU-nl-" + f["uuid"][-6:]},
        "long_uuid": {"uuid": "GPU-" + "0" * 253},
        "backslash_host": {"Hostname": "h\\1", "uuid": "GPU-bs-" + f["uuid"][-6:]},
        "labels_from_uuid": {"uuid": ""},
    }
    if kind == "field_count":
        return quoted(fields[:-1])
    if kind == "malformed":  # text after a closing quote
        return quoted(fields).replace('","', '"x","', 1)
    if kind == "blank":
        return ""
    return quoted([{**f, **changes[kind]}[h] for h in HEADER])


KINDS = [
    "field_count", "malformed", "blank", "missing_metric", "bad_metric_name", "missing_gpu_id",
    "bad_gpu_id",
    "no_identity", "value_not_numeric", "value_not_finite", "value_nan", "bad_timestamp",
    "timestamp_out_of_range", "bad_labels", "new_gpu", "new_metric", "new_time",
    "quoted_newline", "labels_from_uuid", "long_uuid", "backslash_host",
]  # fmt: skip


def export(seed: int) -> str:
    """A real-format export (3 scrapes) with every kind of odd row at random places."""
    rng = random.Random(seed)
    fields = list(gen_dcgm.rows(11, 6, 8, 3))
    out = [quoted(r) for r in fields]
    for kind in KINDS * 3:
        at = rng.randrange(len(out))
        out.insert(at, _bad(fields[rng.randrange(len(fields))], kind))
    return "\n".join([quoted(HEADER), *out]) + "\n"


def read(text: str, parser_class: type[RowParser], partitions: int) -> dict[str, Any]:
    """Everything a read of `text` produces, in a comparable form."""
    table = GpuTable(lambda uuid: hash(uuid) % partitions)
    made: list[RowParser] = []

    def parser_for(cols: Columns) -> RowParser:
        made.append(parser_class(cols, table, partitions))
        return made[0]

    got: list[RowBlock] = [b for _p, b in blocks(io.StringIO(text, newline=""), parser_for, 100)]
    parser = made[0]
    report = parser.report("x", 0.0)
    return {
        "parts": [
            [(list(p.gpu), list(p.metric), list(p.value), list(p.source_time_ns)) for p in b.parts]
            for b in got
        ],
        "rows_read": [b.rows_read for b in got],
        "gpus": table.gpus,
        "metrics": parser.metrics,
        "rejected": report.rejected,
        "defects": report.defects,
        "total": report.rows_read,
    }


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("partitions", [1, 4])
def test_chunked_lookup_equals_row_by_row(seed: int, partitions: int) -> None:
    text = export(seed)
    fast, oracle = read(text, RowParser, partitions), read(text, RowByRow, partitions)
    assert fast == oracle
    assert set(fast["rejected"]) >= {
        "field_count", "malformed_csv", "missing_metric", "bad_metric_name", "missing_gpu_id",
        "bad_gpu_id", "no_identity", "value_not_numeric", "value_not_finite", "bad_timestamp",
        "timestamp_out_of_range", "bad_gpu_field",
    }  # fmt: skip
    assert fast["defects"]["bad_labels"].count >= 1
    assert sum(len(p[0]) for b in fast["parts"] for p in b) > 6 * 8 * 10 * 3 * 0.9


def test_missing_optional_columns_chunked_equals_row_by_row() -> None:
    keep = [0, 1, 2, 6, 10, 11]  # no uuid, device, model, container, pod, namespace
    lines = [quoted([r[i] for i in keep]) for r in [list(HEADER), *gen_dcgm.rows(11, 3, 8, 2)]]
    lines.insert(100, quoted(["2025-07-18T20:42:30Z", "M", "0", "h", "1"]))  # short row
    text = "\n".join(lines) + "\n"
    fast, oracle = read(text, RowParser, 3), read(text, RowByRow, 3)
    assert fast == oracle and fast["rejected"]["field_count"].count == 1
    assert all(g.uuid.startswith("GPU-") for g in fast["gpus"])  # from the labels


def test_encoded_batch_decodes_to_the_rows_and_each_gpu_with_its_labels() -> None:
    table = GpuTable(lambda _uuid: 0)
    long_value = "x" * 20_000  # an entry over 16 KiB: a 3-byte length prefix
    gpus = [
        Gpu("GPU-a", "h1", 0, "nvidia0", "M", labels={"job": "dcgm", "pod": 'p "1"'}),
        Gpu("GPU-b", "h1", 1, labels={}),
        Gpu("GPU-c", "h2", 7, "nvidia7", "M", "c", "p", "ns", labels={"big": long_value}),
    ]
    ordinals = [table.intern(g) for g in gpus]
    gpu, metric = array("I", [ordinals[2], ordinals[0], ordinals[2]]), array("I", [1, 0, 0])
    times, values = array("q", [3, 1, 2]), array("d", [0.5, -1e300, 7.0])
    batch = decode(encode_rows(table, ["m0", "m1"], gpu, metric, times, values, times))
    assert batch.gpus == [gpus[2], gpus[0]] and batch.metrics == ["m1", "m0"]
    assert (batch.gpu_index, batch.metric_index) == ([0, 1, 0], [0, 1, 1])
    assert (batch.time_ns, batch.value, batch.source_time_ns) == (
        [3, 1, 2],
        [0.5, -1e300, 7.0],
        [3, 1, 2],
    )


class _Unsearchable(list[str]):
    """A metric list that must only be appended to and indexed, never searched."""

    def __contains__(self, _item: object) -> bool:
        raise AssertionError("the metric list was searched")

    def index(self, *_args: Any) -> int:
        raise AssertionError("the metric list was searched")


def test_each_new_metric_name_is_looked_up_by_name_not_by_searching_the_list() -> None:
    """A search per new name made 40,000 distinct names quadratic (19 s)."""
    header = quoted(HEADER)
    names = [f"DCGM_FI_CUSTOM_{i}" for i in range(500)]
    texts = [*names, *(f" {n} " for n in names)]  # spaces around: a new text, the same name
    lines = [header] + [
        quoted(["2025-07-18T20:42:30Z", t, "0", "nvidia0", "GPU-0", "m", "h", "", "", "", "1", ""])
        for t in texts
    ]  # fmt: skip
    parsers: list[RowParser] = []

    def parser_for(cols: Columns) -> RowParser:
        parser = RowParser(cols, GpuTable(lambda _uuid: 0), 1)
        parser.metrics = _Unsearchable()
        parsers.append(parser)
        return parser

    text = io.StringIO("\n".join(lines) + "\n")
    ((_parser, block),) = blocks(text, parser_for, 10**6)
    (part,) = block.parts
    assert parsers[0].metrics == names
    assert list(part.metric) == [*range(500), *range(500)]

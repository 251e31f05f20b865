"""The Prometheus label-string parser used on `labels_raw`."""

from __future__ import annotations

import pytest

from streamer.labels import LabelsError, parse_labels


def test_parses_a_dcgm_label_string() -> None:
    raw = (
        'DCGM_FI_DRIVER_VERSION="535.129.03",Hostname="h1",UUID="GPU-5fd4f087",'
        '__name__="DCGM_FI_DEV_GPU_UTIL",device="nvidia0",gpu="0",instance="h1:9400",'
        'job="dgx_dcgm_exporter",modelName="NVIDIA H100 80GB HBM3"'
    )
    labels = parse_labels(raw)
    assert labels["modelName"] == "NVIDIA H100 80GB HBM3"
    assert labels["instance"] == "h1:9400" and labels["__name__"] == "DCGM_FI_DEV_GPU_UTIL"
    assert len(labels) == 9


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", {}),
        ("{}", {}),
        ('{a="1"}', {"a": "1"}),
        ('a="x,y=z"', {"a": "x,y=z"}),
        (r'a="say \"hi\"",b="c:\\d"', {"a": 'say "hi"', "b": "c:\\d"}),
        (r'a="line\nbreak"', {"a": "line\nbreak"}),
        (r'a="odd\q"', {"a": r"odd\q"}),
        (' a = "1" , b="2", ', {"a": "1", "b": "2"}),
        ('a=""', {"a": ""}),
    ],
    ids=["empty", "braces", "braced", "comma", "escapes", "newline", "unknown", "blanks", "blank"],
)
def test_syntax(raw: str, expected: dict[str, str]) -> None:
    assert parse_labels(raw) == expected


@pytest.mark.parametrize(
    "raw", ['a="1" b="2"', 'a="unterminated', "a=1", '1a="x"', 'a="1",a="2"', "garbage"]
)
def test_malformed_strings_raise(raw: str) -> None:
    with pytest.raises(LabelsError):
        parse_labels(raw)

"""Unit tests for line protocol building and escaping (no server)."""

from __future__ import annotations

import pytest

from proto.batch import Gpu
from store import InvalidBatch, schema
from store.flux import parse_time, string, time
from store.lineprotocol import LineProtocolEncoder, escape_tag, series_key
from tests.store.helpers import T0, batch


def test_escape_tag_specials() -> None:
    assert escape_tag("a b,c=d") == r"a\ b\,c\=d"
    assert escape_tag("plain-GPU-1") == "plain-GPU-1"


def test_series_key_sorted_and_without_empty_tags() -> None:
    g = Gpu(uuid="GPU-1", hostname="h 1", gpu=2, device="nvidia2", model="NVIDIA H100")
    assert series_key(g) == (
        r"gpu_telemetry_v2,device=nvidia2,gpu=2,hostname=h\ 1,model=NVIDIA\ H100,uuid=GPU-1"
    )


def test_k8s_tags_only_when_present() -> None:
    plain = Gpu(uuid="u", hostname="h", gpu=0)
    placed = Gpu(uuid="u", hostname="h", gpu=0, pod="p", namespace="ns")
    assert "pod=" not in series_key(plain) and "container" not in series_key(plain)
    assert ",namespace=ns,pod=p," in series_key(placed)
    assert "container" not in series_key(placed)


def test_encode_lines() -> None:
    """A line per point, the metric its fields' keys (InfluxDB merges a GPU's lines of one
    time into one row); a key's specials escaped as a tag's."""
    g = Gpu(uuid="GPU-1", hostname="h", gpu=0)
    points = [(g, "m", T0, 1), (g, "m", T0 + 1, 2.5e17), (g, "a b,c=d", T0, 3.0)]
    body = LineProtocolEncoder().encode(batch(points))
    assert body.decode().split("\n") == [
        f"gpu_telemetry_v2,gpu=0,hostname=h,uuid=GPU-1 m=1.0,m@source_time={T0 - 10**9}i {T0}",
        f"gpu_telemetry_v2,gpu=0,hostname=h,uuid=GPU-1 m=2.5e+17,"
        f"m@source_time={T0 + 1 - 10**9}i {T0 + 1}",
        r"gpu_telemetry_v2,gpu=0,hostname=h,uuid=GPU-1 a\ b\,c\=d=3.0,"
        rf"a\ b\,c\=d@source_time={T0 - 10**9}i {T0}",
    ]


def test_encoder_cache_follows_gpu_changes() -> None:
    enc = LineProtocolEncoder(max_cached=1)
    a = Gpu(uuid="GPU-1", hostname="h", gpu=0)
    moved = Gpu(uuid="GPU-1", hostname="h", gpu=0, pod="p")
    enc.encode(batch([(a, "m", T0, 1.0)]))
    assert b"pod=p" in enc.encode(batch([(moved, "m", T0, 1.0)]))


@pytest.mark.parametrize("bad", ["a\\", "a\nb", "a\tb", "x" * 300])
def test_unstorable_tag_values(bad: str) -> None:
    with pytest.raises(InvalidBatch):
        schema.check_batch(batch([(Gpu(uuid=bad, hostname="h", gpu=0), "m", T0, 1.0)]))


@pytest.mark.parametrize("bad", ["m@source_time", "a@b", "time", "", "a\nb"])
def test_unstorable_metric_names(bad: str) -> None:
    """'@' separates a metric from its source-time field; InfluxDB refuses a field `time`."""
    with pytest.raises(InvalidBatch, match="metric"):
        schema.check_batch(batch([(Gpu(uuid="u", hostname="h", gpu=0), bad, T0, 1.0)]))


def test_flux_string_cannot_break_out() -> None:
    assert string('a"b\\c') == r'"a\"b\\c"'
    assert string("x${y}") == '"x$" + "{y}"'


@pytest.mark.parametrize("ns", [0, 1, T0 + 123_456_789, 2**63 - 2])
def test_flux_time_round_trip(ns: int) -> None:
    assert parse_time(time(ns)) == ns

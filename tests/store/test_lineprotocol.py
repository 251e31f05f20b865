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
    assert series_key(g, "M") == (
        r"gpu_telemetry,device=nvidia2,gpu=2,hostname=h\ 1,metric=M,model=NVIDIA\ H100,uuid=GPU-1"
    )


def test_k8s_tags_only_when_present() -> None:
    plain = Gpu(uuid="u", hostname="h", gpu=0)
    placed = Gpu(uuid="u", hostname="h", gpu=0, pod="p", namespace="ns")
    assert "pod=" not in series_key(plain, "m") and "container" not in series_key(plain, "m")
    assert ",namespace=ns,pod=p," in series_key(placed, "m")
    assert "container" not in series_key(placed, "m")


def test_encode_lines() -> None:
    g = Gpu(uuid="GPU-1", hostname="h", gpu=0)
    body = LineProtocolEncoder().encode(batch([(g, "m", T0, 1), (g, "m", T0 + 1, 2.5e17)]))
    assert body.decode().split("\n") == [
        f"gpu_telemetry,gpu=0,hostname=h,metric=m,uuid=GPU-1 value=1.0,"
        f"source_time={T0 - 10**9}i {T0}",
        f"gpu_telemetry,gpu=0,hostname=h,metric=m,uuid=GPU-1 value=2.5e+17,"
        f"source_time={T0 + 1 - 10**9}i {T0 + 1}",
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


def test_flux_string_cannot_break_out() -> None:
    assert string('a"b\\c') == r'"a\"b\\c"'
    assert string("x${y}") == '"x$" + "{y}"'


@pytest.mark.parametrize("ns", [0, 1, T0 + 123_456_789, 2**63 - 2])
def test_flux_time_round_trip(ns: int) -> None:
    assert parse_time(time(ns)) == ns

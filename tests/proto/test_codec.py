"""The telemetry batch codec: round trips, invariants, garbage, and the batch builder."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proto.batch import Gpu, PointBatch
from proto.codec import (
    BatchBuilder,
    CodecError,
    check,
    decode,
    encode,
    encode_untimed,
    with_times,
)
from proto.gen import telemetry_pb2 as pb

H100 = "NVIDIA H100 80GB HBM3"


def gpu(n: int, host: str = "dgx-h100-001", **kw: object) -> Gpu:
    labels = {"Hostname": host, "UUID": f"GPU-{n:08x}", "gpu": str(n % 8), "job": "dcgm"}
    return Gpu(f"GPU-{n:08x}", host, n % 8, f"nvidia{n % 8}", H100, labels=labels, **kw)  # type: ignore[arg-type]


def sample_batch() -> PointBatch:
    b = BatchBuilder()
    g0, g1 = gpu(0), gpu(1, container="trainer", pod="llama-0", namespace="ml")
    b.add(g0, "DCGM_FI_DEV_GPU_UTIL", 1_763_000_000_000_000_000, 97.0, 1_752_871_350_000_000_000)
    b.add(g1, "DCGM_FI_DEV_POWER_USAGE", 1_763_000_000_000_000_001, 412.125, 0)
    b.add(g0, "DCGM_FI_DEV_POWER_USAGE", 1_763_000_000_000_000_002, -0.0, 7)
    return b.build()


def test_round_trip_keeps_every_point_and_gpu_descriptor() -> None:
    batch = sample_batch()
    out = decode(encode(batch))
    assert out == batch
    assert list(out.points()) == list(batch.points())
    assert out.gpus[1].pod == "llama-0" and out.gpus[1].labels["job"] == "dcgm"


def test_labels_travel_once_per_gpu_not_per_point() -> None:
    b = BatchBuilder()
    g = gpu(3)
    for i in range(500):
        b.add(g, f"M{i % 10}", i, float(i), i)
    msg = pb.PointBatch.FromString(encode(b.build()))
    assert len(msg.gpus) == 1 and len(msg.metrics) == 10 and len(msg.value) == 500


def test_empty_batch_round_trips() -> None:
    assert encode(PointBatch()) == b""
    assert len(decode(b"")) == 0


@pytest.mark.parametrize(
    "data",
    [b"\xff\xff\xff\xff", b"not a protobuf at all", b"\x0a\x05ab", encode(sample_batch())[:-3]],
    ids=["bad-tag", "text", "truncated-entry", "truncated-batch"],
)
def test_garbage_raises_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError, match=r"telemetry batch|out of range|column|finite"):
        decode(data)


def test_valid_protobuf_without_known_fields_is_rejected() -> None:
    with pytest.raises(CodecError, match="no known field"):
        decode(b"\xf8\x07\x01")  # field 127 varint: well-formed protobuf, not a batch


def wire(**columns: list[float] | list[int]) -> bytes:
    msg = pb.PointBatch(gpus=[pb.Gpu(uuid="GPU-a")], metrics=["m"])
    base = {"gpu_index": [0], "metric_index": [0], "time_ns": [1], "value": [1.0]}
    for name, column in {**base, "source_time_ns": [0], **columns}.items():
        getattr(msg, name).extend(column)
    return msg.SerializeToString()


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"gpu_index": [1]}, "gpu_index 1 out of range: the batch lists 1"),
        ({"metric_index": [5]}, "metric_index 5 out of range"),
        ({"value": [1.0, 2.0]}, "column value has 2 entries, time_ns has 1"),
        ({"source_time_ns": []}, "column source_time_ns has 0 entries"),
        ({"value": [math.nan]}, r"value\[0\] is nan"),
        ({"value": [math.inf]}, r"value\[0\] is inf"),
    ],
)
def test_decode_rejects_broken_invariants(columns: dict[str, list[float]], message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode(wire(**columns))


def test_encode_rejects_broken_invariants() -> None:
    batch = sample_batch()
    batch.value[1] = -math.inf
    with pytest.raises(CodecError, match=r"value\[1\] is -inf"):
        encode(batch)
    batch = sample_batch()
    batch.gpu_index[0] = -1
    with pytest.raises(CodecError, match="gpu_index -1 out of range"):
        encode(batch)
    batch = sample_batch()
    batch.time_ns.append(5)
    with pytest.raises(CodecError, match="time_ns has 4"):
        check(batch)
    batch = sample_batch()
    batch.time_ns[0] = 2**64
    with pytest.raises(CodecError, match="out of range for its wire type"):
        encode(batch)


def test_huge_finite_values_are_accepted() -> None:
    batch = sample_batch()
    batch.value[:] = [1.7e308, 1.7e308, 1.7e308]  # their sum overflows; each is finite
    assert decode(encode(batch)).value == batch.value


def test_builder_lists_each_gpu_and_metric_once_and_starts_afresh() -> None:
    b = BatchBuilder()
    g0, g1 = gpu(0), gpu(1)
    for i, g in enumerate([g0, g1, g0, g1]):
        b.add(g, "A" if i < 2 else "B", i, float(i))
    assert len(b) == 4
    batch = b.build()
    assert batch.gpus == [g0, g1] and batch.metrics == ["A", "B"]
    assert batch.gpu_index == [0, 1, 0, 1] and batch.metric_index == [0, 0, 1, 1]
    assert batch.source_time_ns == [0, 0, 0, 0]
    assert len(b) == 0 and b.build() == PointBatch()


text = st.text(max_size=12)
gpus = st.builds(
    Gpu,
    uuid=text, hostname=text, gpu=st.integers(0, 2**32 - 1), device=text, model=text,
    container=text, pod=text, namespace=text, labels=st.dictionaries(text, text, max_size=4),
)  # fmt: skip
int64 = st.integers(-(2**63), 2**63 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def batches(draw: st.DrawFn) -> PointBatch:
    g = draw(st.lists(gpus, min_size=1, max_size=4))
    m = draw(st.lists(text, min_size=1, max_size=4))
    n = draw(st.integers(0, 40))
    return PointBatch(
        gpus=g,
        metrics=m,
        gpu_index=draw(st.lists(st.integers(0, len(g) - 1), min_size=n, max_size=n)),
        metric_index=draw(st.lists(st.integers(0, len(m) - 1), min_size=n, max_size=n)),
        time_ns=draw(st.lists(int64, min_size=n, max_size=n)),
        value=draw(
            st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=n, max_size=n)
        ),
        source_time_ns=draw(st.lists(int64, min_size=n, max_size=n)),
    )


@settings(max_examples=60, deadline=None)
@given(batches())
def test_property_decode_inverts_encode(batch: PointBatch) -> None:
    out = decode(encode(batch))
    assert out.gpus == batch.gpus and out.metrics == batch.metrics
    assert out.gpu_index == batch.gpu_index and out.metric_index == batch.metric_index
    assert out.time_ns == batch.time_ns and out.source_time_ns == batch.source_time_ns
    assert out.value == batch.value


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_property_arbitrary_bytes_decode_or_raise_codec_error(data: bytes) -> None:
    try:
        batch = decode(data)
    except CodecError:
        return
    check(batch)


def test_untimed_wire_plus_a_time_column_decodes_as_the_whole_batch() -> None:
    batch = sample_batch()
    untimed = encode_untimed(batch)
    assert untimed.count == 3
    later = [t + 10**9 for t in batch.time_ns]  # the same points sent again, later
    out = decode(with_times(untimed, later))
    assert list(out.points()) == list(replace(batch, time_ns=later).points())
    assert decode(with_times(untimed, batch.time_ns)) == decode(encode(batch))


def test_untimed_encoding_checks_the_invariants_and_the_time_column_length() -> None:
    bad = sample_batch()
    bad.metric_index[0] = 9
    with pytest.raises(CodecError, match="metric_index"):
        encode_untimed(bad)
    nan = sample_batch()
    nan.value[1] = math.nan
    with pytest.raises(CodecError, match="finite"):
        encode_untimed(nan)
    untimed = encode_untimed(sample_batch())
    with pytest.raises(CodecError, match="2 timestamps for a batch of 3"):
        with_times(untimed, [1, 2])
    with pytest.raises(CodecError, match="out of range"):
        with_times(untimed, [1, 2, 2**64])


def test_decode_without_labels_shares_equal_gpus_between_batches_and_bounds_the_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from proto import codec

    wire = encode(sample_batch())
    first, again = decode(wire, labels=False), decode(wire, labels=False)
    want = [replace(g, labels={}) for g in sample_batch().gpus]
    assert first.gpus == again.gpus == want
    assert all(a is b for a, b in zip(first.gpus, again.gpus, strict=True))  # built once
    moved = replace(sample_batch().gpus[0], hostname="dgx-h100-002")
    other = sample_batch()
    other.gpus[0] = moved
    assert decode(encode(other), labels=False).gpus[0] == replace(moved, labels={})
    monkeypatch.setattr(codec, "_MAX_INTERNED", 1)
    decode(wire, labels=False)  # over the bound: the cache starts afresh
    assert len(codec._INTERNED) <= 2
    assert decode(wire, labels=True).gpus == sample_batch().gpus  # labels: never shared


def test_the_view_reads_every_field_but_labels_with_the_same_number_and_type() -> None:
    def shape(message: object) -> dict[str, tuple[int, int, bool]]:
        fields = message.DESCRIPTOR.fields  # type: ignore[attr-defined]
        return {f.name: (f.number, f.type, f.is_repeated) for f in fields}

    assert shape(pb.PointBatchView) == shape(pb.PointBatch)
    assert shape(pb.GpuView) == {k: v for k, v in shape(pb.Gpu).items() if k != "labels"}


def test_decode_without_labels_is_decode_minus_labels_whatever_labels_travel() -> None:
    batch = sample_batch()
    relabelled = sample_batch()
    relabelled.gpus = [replace(g, labels={**g.labels, "extra": "x" * 300}) for g in batch.gpus]
    for wire in (encode(batch), encode(relabelled)):
        full, bare = decode(wire), decode(wire, labels=False)
        assert bare.gpus == [replace(g, labels={}) for g in full.gpus]
        assert [p._replace(gpu=p.gpu.uuid) for p in bare.points()] == [
            p._replace(gpu=p.gpu.uuid) for p in full.points()
        ]
    with pytest.raises(CodecError, match="not a telemetry batch"):
        decode(b"\x0a\x05\x0a\x03abc\xff", labels=False)


def test_decode_without_labels_does_not_hold_outsized_entries() -> None:
    from proto import codec

    codec._INTERNED.clear()
    batch = sample_batch()
    batch.gpus = [replace(g, labels={**g.labels, "huge": "x" * 2_000}) for g in batch.gpus]
    wire = encode(batch)
    first, again = decode(wire, labels=False), decode(wire, labels=False)
    assert first.gpus == again.gpus == [replace(g, labels={}) for g in batch.gpus]
    assert not codec._INTERNED  # decoded each time instead of held

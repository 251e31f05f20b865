"""How the InfluxDB store turns catalog rows into GPUs (no server: rows as /query answers)."""

from __future__ import annotations

import random

import orjson

from store.catalog import CatalogUpdate, GpuRecord, reduce_gpus, shard_of
from store.influx_catalog import (
    SLOT_BASE_NS,
    SLOT_BITS,
    WINDOW_BITS,
    candidates,
    encode,
    gpu_slot,
    gpu_statement,
    gpu_window,
    parse_gpu,
    summarize,
)  # fmt: skip
from store.influxql import CATALOG_COLUMNS
from store.v1query import Series

COLUMNS = ["time", *CATALOG_COLUMNS]


def row(uuid: str, anchor: int, first: int, last: int, host: str = "h1", moved: bool = False):
    """A shard-series row as this layout writes it (`last` its own field, later than the JSON's)."""
    body: dict[str, object] = {"first": first, "last": first, "hostname": host}
    body.update(device="nvidia0", anchor=anchor)
    if moved:
        body["moved"] = True
    return [gpu_slot(uuid, anchor), orjson.dumps(body).decode(), uuid, None, "3", "NVIDIA H100",
            last]  # fmt: skip


def old_row(uuid: str, anchor: int, first: int, last: int, host: str = "h1"):
    """A row of the earlier layout: identity in fields, `last` only in the JSON."""
    body = {"first": first, "last": last, "device": "nvidia0", "anchor": anchor}
    return [gpu_slot(uuid, anchor), orjson.dumps(body).decode(), uuid, host, "3", "NVIDIA H100",
            None]  # fmt: skip


def host_row(uuid: str, anchor: int, first: int, last: int, host: str = "h1"):
    """A host-series row of this layout: everything but the tag and `last` in the JSON."""
    body = {"first": first, "last": first, "uuid": uuid, "gpu": 3, "model": "NVIDIA H100",
            "device": "nvidia0", "anchor": anchor}  # fmt: skip
    return [gpu_slot(uuid, anchor), orjson.dumps(body).decode(), None, host, None, None, last]


def test_rows_are_grouped_per_gpu_and_keyed_by_their_series_shard() -> None:
    found = [
        Series(
            {"shard": "007"}, COLUMNS, [row("a", 1, 5, 6), row("b", 1, 5, 6), row("a", 2, 3, 9)]
        ),
        Series({}, COLUMNS, [row("c", 1, 5, 6)]),  # no shard tag: the key is computed
    ]
    grouped = candidates(found)
    assert [key for key, _ in grouped] == [(7, "a"), (7, "b"), (shard_of("c"), "c")]
    assert [len(rows) for _, rows in grouped] == [2, 1, 1]


def test_a_gpu_is_its_records_merged_as_reduce_gpus_merges_them() -> None:
    one = row("b", 1, 5, 6)
    assert summarize(((0, "b"), [one])) == reduce_gpus([parse_gpu(one)])[0]
    two = [row("a", 1, 5, 6), row("a", 2, 3, 9, host="h2")]  # two writers' records
    merged = summarize(((0, "a"), two))
    assert merged is not None
    assert (merged.first_seen_ns, merged.last_seen_ns, merged.hostname, merged.gpu) == (
        3,
        9,
        "h2",
        3,
    )


def test_a_gpu_matched_only_by_moved_records_is_left_out() -> None:
    assert summarize(((0, "a"), [row("a", 1, 5, 6, moved=True)])) is None
    assert (
        summarize(((0, "a"), [row("a", 1, 5, 6, moved=True), row("a", 2, 5, 6, moved=True)]))
        is None
    )


def test_rows_of_both_layouts_and_both_series_read_the_same() -> None:
    want = reduce_gpus([parse_gpu(row("a", 1, 5, 9))])[0]
    assert (want.uuid, want.hostname, want.gpu, want.model, want.first_seen_ns) == (
        "a", "h1", 3, "NVIDIA H100", 5,
    )  # fmt: skip
    assert want.last_seen_ns == 9  # the `last` field, not the JSON's older copy
    for other in (old_row("a", 1, 5, 9), host_row("a", 1, 5, 9)):
        assert reduce_gpus([parse_gpu(other)])[0] == want
        assert summarize(((0, "a"), [other])) == want


def test_a_last_seen_without_its_record_is_left_out() -> None:
    lost = [gpu_slot("a", 7), None, None, None, None, None, 99]  # `last` alone on a lost slot
    found = [Series({"shard": "007"}, COLUMNS, [lost, row("b", 1, 5, 6)])]
    assert [key for key, _ in candidates(found)] == [(7, "b")]


def test_a_later_last_seen_is_written_alone_onto_both_copies_of_the_record() -> None:
    fields = ("GPU-1", "h 1", 3, "nvidia3", "", "", "", "")
    whole = GpuRecord(fields, anchor_ns=5, first_seen_ns=5, last_seen_ns=6)
    later = GpuRecord(fields, anchor_ns=5, first_seen_ns=5, last_seen_ns=70, seen_only=True)
    shard, host = encode(CatalogUpdate((whole,))).decode().splitlines()
    assert 'model=""' in shard  # named even when empty: a rewrite would keep an old value
    slot = gpu_slot("GPU-1", 5)
    assert encode(CatalogUpdate((later,))).decode().splitlines() == [
        f"{shard.split(' uuid=')[0]} last=70i {slot}",
        f"{host.split(' last=')[0]} last=70i {slot}",  # the series key: `h\\ 1` escaped
    ]


def test_every_record_of_a_gpu_lies_in_the_window_its_uuid_names() -> None:
    """A uuid lookup reads one window of its shard's series: each writer's record of the GPU
    (one per anchor) is in it, and different GPUs get different windows."""
    rng = random.Random(7)
    lows = set()
    for _ in range(2_000):
        uuid = f"GPU-{rng.getrandbits(128):032x}"
        low, high = gpu_window(uuid)
        assert high - low + 1 == 2**WINDOW_BITS
        assert low >= SLOT_BASE_NS and high < SLOT_BASE_NS + 2**SLOT_BITS
        slots = {gpu_slot(uuid, rng.getrandbits(63)) for _ in range(20)}
        assert len(slots) == 20 and all(low <= s <= high for s in slots)
        lows.add(low)
    assert len(lows) > 1_950  # 2^17 windows: the uuids spread over them
    statement = gpu_statement("GPU-1")
    low, high = gpu_window("GPU-1")
    assert f"time >= {low} AND time <= {high}" in statement

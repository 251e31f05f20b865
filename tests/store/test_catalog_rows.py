"""How the InfluxDB store turns catalog rows into GPUs (no server: rows as /query answers)."""

from __future__ import annotations

import orjson

from store.catalog import reduce_gpus, shard_of
from store.influx_catalog import candidates, gpu_slot, parse_gpu, summarize
from store.influxql import CATALOG_COLUMNS
from store.v1query import Series

COLUMNS = ["time", *CATALOG_COLUMNS]


def row(uuid: str, anchor: int, first: int, last: int, host: str = "h1", moved: bool = False):
    body: dict[str, object] = {"first": first, "last": last, "device": "nvidia0", "anchor": anchor}
    if moved:
        body["moved"] = True
    return [gpu_slot(uuid, anchor), orjson.dumps(body).decode(), uuid, host, "3", "NVIDIA H100"]


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

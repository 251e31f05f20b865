"""The store contract, run against a real SQLite file and a real InfluxDB 1.8 server."""

from __future__ import annotations

import gzip
import threading
from dataclasses import replace

import pytest

from store import (
    InvalidArgument,
    InvalidBatch,
    Store,
    StoredPoint,
    StoreUnavailable,
    open_store,
    schema,
)
from store.base import PreparedWrite
from store.catalog import gpu_key, shard_of
from store.influx import InfluxStore
from store.influx_catalog import slot
from store.lineprotocol import LineProtocolEncoder
from tests.fixtures.influx import InfluxServer, require_influxd
from tests.store.helpers import T0, S, batch, gpu, grid

UTIL, TEMP, POWER = "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE"


def test_rewrite_is_idempotent(store: Store) -> None:
    g = gpu(1)
    b = grid([g], [UTIL, TEMP], [T0, T0 + S])
    store.write(b)
    store.write(b)
    assert store.count_points() == {(g.uuid, UTIL): 2, (g.uuid, TEMP): 2}
    assert len(store.query_points(g.uuid, T0, T0 + S)) == 4


def test_prepared_write_from_another_thread_stores_the_batch_once(store: Store) -> None:
    # The collector prepares on its loop thread and writes on its writer thread, and writes
    # a prepared batch again when the first attempt failed.
    g = gpu(1)
    b = grid([g], [UTIL, TEMP], [T0, T0 + S, T0 + 2 * S])
    prepared = store.prepare(b)
    errors: list[BaseException] = []

    def write_twice() -> None:
        try:
            store.write_prepared(prepared)
            store.write_prepared(prepared)
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=write_twice, name="test-writer")
    writer.start()
    writer.join()
    assert not errors
    assert store.count_points() == {(g.uuid, UTIL): 3, (g.uuid, TEMP): 3}
    assert store.query_points(g.uuid, T0, T0) == [
        StoredPoint(TEMP, T0, 0.1, T0 - S),
        StoredPoint(UTIL, T0, 0.0, T0 - S),
    ]


def test_prepared_unstorable_batch_rejected(store: Store) -> None:
    bad = batch([(gpu(1, host="h\\", index=0), UTIL, T0, 1.0)])
    with pytest.raises(InvalidBatch):
        store.write_prepared(store.prepare(bad))
    with pytest.raises(InvalidBatch):
        store.write_prepared(PreparedWrite(bad))
    assert store.count_points() == {}


def test_influx_body_is_line_protocol_gzipped_by_the_store(influx_server: InfluxServer) -> None:
    b = grid([gpu(1), gpu(2)], [UTIL, TEMP], [T0, T0 + S])
    with InfluxStore(**influx_server.create_database().store_opts()) as store:
        body = store.prepare(b).body
    assert body is not None and body[:2] == b"\x1f\x8b"  # the gzip magic
    points = LineProtocolEncoder().encode(b)
    text = gzip.decompress(body)
    assert text.startswith(points + b"\n")  # then the catalog records of both GPUs
    rest = text[len(points) + 1 :].decode().splitlines()
    assert (
        sorted(line.split(",", 1)[0] for line in rest)
        == ["gpu_catalog_by_host_v3"] * 2 + ["gpu_catalog_names_v2"] * 4 + ["gpu_catalog_v3"] * 2
    )  # two GPUs (in their shard's and their host's series); their host, model, two metrics
    # One series per catalog shard: the GPU's identity is in fields, the time is its slot.
    assert all(line.split(" ", 1)[0].count(",") == 1 for line in rest if "_names" not in line)


def test_influx_catalog_is_one_series_per_shard(influx_server: InfluxServer) -> None:
    """A catalog page costs InfluxDB one cursor per series it reads: the catalog holds one
    series per shard (not one per GPU), one point per GPU and writer, and a redelivered or
    moved GPU overwrites its point instead of adding one (issue 18)."""
    from store import catalog, schema
    from store.v1query import QueryClient

    conn = influx_server.create_database()
    gpus = [gpu(i) for i in range(600)]  # more GPUs than shards
    with InfluxStore(**conn.store_opts()) as store:
        store.write(grid(gpus, [UTIL], [T0]))
        store.write(grid(gpus, [UTIL], [T0]))  # redelivered
        moved = gpus[0].__class__(uuid=gpus[0].uuid, hostname="elsewhere", gpu=7)
        store.write(grid([moved], [UTIL], [T0 + S]))
        listed = store.list_gpus(limit=1000)
        on_new = store.list_gpus(hostname="elsewhere")
        on_old = store.list_gpus(hostname=gpus[0].hostname)
    client = QueryClient(conn.url, conn.bucket, conn.token)
    try:
        found = client.series(f'SELECT "uuid" FROM "{schema.CATALOG_MEASUREMENT}" GROUP BY *')
    finally:
        client.close()
    shards = {catalog.shard_of(g.uuid) for g in gpus}
    assert {s.tags["shard"] for s in found} == {f"{x:03d}" for x in shards}
    assert len(found) == len(shards) < len(gpus)
    assert sorted(row[1] for s in found for row in s.values) == sorted(g.uuid for g in gpus)
    assert [(e.hostname, e.gpu) for e in listed if e.uuid == moved.uuid] == [("elsewhere", 7)]
    assert [e.uuid for e in on_new] == [moved.uuid]  # the host's own series
    assert on_old and all(e.hostname == gpus[0].hostname for e in on_old)
    assert moved.uuid not in {e.uuid for e in on_old}  # marked moved in the old host's series


@pytest.mark.parametrize("layout", ["gpu_catalog", "gpu_catalog_v2"])
def test_influx_catalog_of_an_earlier_layout_is_rebuilt_by_the_backfill(
    influx_server: InfluxServer, layout: str
) -> None:
    """An InfluxDB catalog written in an earlier layout (`gpu_catalog`: one series per GPU;
    `gpu_catalog_v2`: a record's slot hashed from uuid and anchor together) is not read;
    `backfill_catalog` (the `gputel-store backfill-catalog` command) rebuilds it."""
    import urllib.request

    conn = influx_server.create_database()
    g = gpu(1)
    with InfluxStore(**conn.store_opts(), write_catalog=False) as old:
        old.write(grid([g], [UTIL], [T0, T0 + S]))
    body = f'{{\\"first\\":{T0},\\"last\\":{T0 + S},\\"anchor\\":{T0}}}'
    if layout == "gpu_catalog":
        tags = f"gpu=1,hostname={g.hostname},shard=001,uuid={g.uuid}"
        line = f'gpu_catalog,{tags} record="{body}" {T0}'
    else:
        fields = f'uuid="{g.uuid}",gpu="1",model="",last={T0 + S}i,record="{body}"'
        at = slot(g.uuid + "\x00" + str(T0))  # the `_v2` slot of this writer's record
        line = f"gpu_catalog_v2,shard={shard_of(g.uuid):03d} {fields} {at}"
    req = urllib.request.Request(f"{conn.url}/write?db={conn.bucket}", line.encode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 204
    with InfluxStore(**conn.store_opts()) as store:
        assert store.list_gpus() == [] and store.get_gpu(g.uuid) is None
        assert store.backfill_catalog() == 1
        [entry] = store.list_gpus()
    assert (entry.uuid, entry.first_seen_ns, entry.last_seen_ns) == (g.uuid, T0, T0 + S)


@pytest.mark.parametrize("missing", ["value", "source_time"])
def test_influx_point_seen_in_part_is_not_there_yet(
    influx_server: InfluxServer, missing: str
) -> None:
    """InfluxDB 1.8 makes a batch's fields visible one field at a time, so a reader can
    see a point with one field only (seen as HTTP 500s under load before this was handled).
    Such a point is not stored yet: a page ends before it (so no cursor passes it) and
    `latest` ignores it; once the other field lands it is read like any other point."""
    g = gpu(1)
    whole = grid([g], [UTIL], [T0, T0 + S, T0 + 2 * S])
    first, middle, last = LineProtocolEncoder().encode(whole).decode().splitlines()
    field = f"{UTIL}=" if missing == "value" else f"{schema.source_field(UTIL)}="
    rest, stamp = middle.rsplit(" ", 1)  # tag values may hold escaped spaces
    series, fields = rest.rsplit(" ", 1)
    partial = ",".join(f for f in fields.split(",") if not f.startswith(field))
    with InfluxStore(**influx_server.create_database().store_opts()) as store:
        store.write_prepared(PreparedWrite(whole, gzip.compress(f"{first}\n{last}".encode())))
        store.write_prepared(
            PreparedWrite(whole, gzip.compress(f"{series} {partial} {stamp}".encode()))
        )
        assert store.query_points(g.uuid, T0, T0 + 2 * S) == [
            StoredPoint(UTIL, T0, whole.value[0], T0 - S)
        ]
        assert store.query_raw(g.uuid, T0, T0 + 2 * S) == [(T0, UTIL, whole.value[0], T0 - S)]
        assert store.latest(g.uuid)[UTIL].time_ns == T0 + 2 * S
        assert store.latest_of([g.uuid], [UTIL])[g.uuid][UTIL].time_ns == T0 + 2 * S
        assert store.query_points(g.uuid, T0 + S, T0 + S) == []
        store.write_prepared(PreparedWrite(whole, gzip.compress(middle.encode())))
        assert [p.time_ns for p in store.query_points(g.uuid, T0, T0 + 2 * S)] == [
            T0,
            T0 + S,
            T0 + 2 * S,
        ]


def test_rewrite_replaces_value(store: Store) -> None:
    g = gpu(1)
    store.write(batch([(g, UTIL, T0, 1.0)]))
    store.write(batch([(g, UTIL, T0, 2.0)]))
    assert store.query_points(g.uuid, T0, T0) == [StoredPoint(UTIL, T0, 2.0, T0 - S)]


def test_bounds_are_inclusive(store: Store) -> None:
    g = gpu(1)
    store.write(grid([g], [UTIL], [T0, T0 + S, T0 + 2 * S]))
    assert [p.time_ns for p in store.query_points(g.uuid, T0, T0 + 2 * S)] == [
        T0,
        T0 + S,
        T0 + 2 * S,
    ]
    assert [p.time_ns for p in store.query_points(g.uuid, T0 + S, T0 + S)] == [T0 + S]
    assert store.query_points(g.uuid, T0 + 1, T0 + S - 1) == []
    assert [p.time_ns for p in store.query_points(g.uuid, T0 + 1, T0 + S)] == [T0 + S]


def test_nanoseconds_survive(store: Store) -> None:
    g = gpu(1)
    t = T0 + 123_456_789
    store.write(batch([(g, UTIL, t, 7.5)]))
    assert store.query_points(g.uuid, t, t) == [StoredPoint(UTIL, t, 7.5, t - S)]
    assert store.query_points(g.uuid, t + 1, t + 1) == []


def test_metric_filter(store: Store) -> None:
    g = gpu(1)
    store.write(grid([g], [UTIL, TEMP, POWER], [T0, T0 + S]))
    got = store.query_points(g.uuid, T0, T0 + S, metrics=[UTIL, POWER])
    assert [(p.time_ns, p.metric) for p in got] == [
        (T0, UTIL),
        (T0, POWER),
        (T0 + S, UTIL),
        (T0 + S, POWER),
    ]
    assert store.query_points(g.uuid, T0, T0 + S, metrics=["NOPE"]) == []


def test_points_ordered_and_only_this_gpu(store: Store) -> None:
    a, b = gpu(1), gpu(2)
    store.write(grid([a, b], [TEMP, UTIL], [T0 + 2 * S, T0, T0 + S]))
    got = store.query_points(a.uuid, T0, T0 + 10 * S)
    keys = [(p.time_ns, p.metric) for p in got]
    assert keys == sorted(keys) and len(keys) == 6


def test_keyset_paging_stable_while_writing(store: Store) -> None:
    g = gpu(1)
    times = [T0 + i * S for i in range(5)]
    store.write(grid([g], [TEMP, UTIL], times))
    end = T0 + 100 * S
    seen, after = [], None
    for page_no in range(10):
        page = store.query_points(g.uuid, T0, end, limit=3, after=after)
        if not page:
            break
        seen += [(p.time_ns, p.metric) for p in page]
        after = (page[-1].time_ns, page[-1].metric)
        # Newer points arrive between pages; they join the end, nothing repeats or is skipped.
        store.write(grid([g], [UTIL], [T0 + (50 + page_no) * S]))
    assert len(seen) == len(set(seen)) and seen == sorted(seen)
    assert seen[:10] == [(t, m) for t in times for m in (TEMP, UTIL)]
    assert all(m == UTIL for _, m in seen[10:])


def test_sparse_history_pages_in_order_across_long_gaps(store: Store) -> None:
    """Points hours to years apart: pages find them in order, none lost or repeated."""
    g = gpu(1)
    hour = 3600 * 1_000_000_000
    times = [T0, T0 + 1, T0 + 5 * hour, T0 + 300 * hour, T0 + 9000 * hour, T0 + 9000 * hour + 1]
    store.write(grid([g], [UTIL, TEMP], times))
    seen: list[tuple[int, str]] = []
    after = None
    while True:
        page = store.query_points(g.uuid, 0, T0 + 9000 * hour + 1, limit=3, after=after)
        seen += [(p.time_ns, p.metric) for p in page]
        if len(page) < 3:
            break
        after = seen[-1]
    assert seen == sorted((t, m) for t in times for m in (UTIL, TEMP))
    assert store.query_points(g.uuid, T0 + 2, T0 + 5 * hour - 1) == []
    assert [p.time_ns for p in store.query_points(g.uuid, 0, T0 + 5 * hour, [UTIL])] == [
        T0,
        T0 + 1,
        T0 + 5 * hour,
    ]


@pytest.mark.parametrize("limit", [1, 3, 7])
def test_pages_cut_inside_one_time_lose_and_repeat_nothing(store: Store, limit: int) -> None:
    """Five metrics share every time, so most pages end inside a time. InfluxDB's InfluxQL
    orders points of one time in no promised way; the store must still serve (time, metric)
    order and a cursor that neither skips nor repeats (see store.influx_points)."""
    g, names = gpu(1), ["m-e", "m-a", "m-d", "m-c", "m-b"]
    times = [T0, T0 + 1, T0 + S]
    store.write(grid([g], names, times))
    store.write(grid([gpu(2)], names, times))  # another GPU at the same times: not served
    seen: list[tuple[int, str]] = []
    after = None
    while page := store.query_raw(g.uuid, T0, T0 + S, None, limit, after):
        assert len(page) <= limit
        seen += [(t, m) for t, m, _, _ in page]
        after = seen[-1]
    assert seen == sorted((t, m) for t in times for m in names)
    assert store.query_raw(g.uuid, T0, T0 + 1, None, limit, (T0 + S, "m-a")) == []
    assert (
        store.query_raw(g.uuid, T0 + 1, T0 + 1, None, limit, (T0, "m-z"))
        == [(T0 + 1, m, v, s) for t, m, v, s in store.query_raw(g.uuid, T0 + 1, T0 + 1, None, 10)][
            :limit
        ]
    )


@pytest.mark.parametrize("limit", [7, 99, 150])
def test_pages_cut_inside_a_time_of_many_metrics(store: Store, limit: int) -> None:
    """100 metrics at every time: a time holds more points than most pages (on InfluxDB a
    time is one row, read whole); every page must still be in order and as full as asked,
    and none may skip or repeat a point."""
    g, names = gpu(1), [f"m-{i:03d}" for i in range(100)][::-1]
    times = [T0, T0 + 1, T0 + S]
    store.write(grid([g], names, times))
    seen: list[tuple[int, str]] = []
    after = None
    while page := store.query_raw(g.uuid, T0, T0 + S, None, limit, after):
        assert len(page) == min(limit, 300 - len(seen))
        seen += [(t, m) for t, m, _, _ in page]
        after = seen[-1]
    assert seen == sorted((t, m) for t in times for m in names)


@pytest.mark.parametrize("limit", [1, 2, 3, 5])
def test_pages_of_a_gpu_whose_descriptor_changed_at_one_time(store: Store, limit: int) -> None:
    """A GPU that moved host and pod while it was written has two descriptors; on InfluxDB
    two series, whose rows of one time come apart (a page's row limit may cut between them).
    Its pages still hold every point once, in (time, metric) order, whatever the page size."""
    before, after_move = gpu(1), replace(gpu(1), hostname="moved", pod="p")
    times = [T0, T0 + 1, T0 + S, T0 + 2 * S]
    store.write(grid([before], ["m-b", "m-d"], times))
    store.write(grid([after_move], ["m-a", "m-c", "m-e"], times))
    seen: list[tuple[int, str]] = []
    after = None
    while page := store.query_raw(before.uuid, T0, T0 + 2 * S, None, limit, after):
        assert len(page) == min(limit, 20 - len(seen))
        seen += [(t, m) for t, m, _, _ in page]
        after = seen[-1]
    assert seen == sorted((t, m) for t in times for m in ("m-a", "m-b", "m-c", "m-d", "m-e"))


def test_limit(store: Store) -> None:
    g = gpu(1)
    store.write(grid([g], [UTIL], [T0 + i * S for i in range(10)]))
    assert len(store.query_points(g.uuid, T0, T0 + 10 * S, limit=4)) == 4


def test_query_raw_is_query_points_as_tuples(store: Store) -> None:
    """The gateway's fast path selects, orders, limits and pages exactly like query_points."""
    a, b = gpu(1), gpu(2)
    times = [T0, T0 + 1, T0 + S, T0 + 2 * S, T0 + 2 * S + 999_999_999]
    store.write(grid([a, b], [UTIL, TEMP, POWER], times))
    store.write(batch([(a, UTIL, T0 + S, 0.1 + 0.2)]))
    cases: list[tuple[int, int, list[str] | None, int, tuple[int, str] | None]] = [
        (T0, T0 + 3 * S, None, 1000, None),
        (T0 + 1, T0 + 2 * S, None, 1000, None),  # both bounds land on points
        (T0 + 2, T0 + S - 1, None, 1000, None),  # nothing inside
        (T0, T0 + 3 * S, [POWER, UTIL], 4, None),
        (T0, T0 + 3 * S, None, 5, (T0 + 1, TEMP)),
        (T0, T0 + 3 * S, [TEMP], 1000, (T0 + S, TEMP)),
    ]
    for start, end, metrics, limit, after in cases:
        points = store.query_points(a.uuid, start, end, metrics, limit, after)
        raw = store.query_raw(a.uuid, start, end, metrics, limit, after)
        assert raw == [(p.time_ns, p.metric, p.value, p.source_time_ns) for p in points]
    assert (T0 + S, UTIL, 0.1 + 0.2) in [r[:3] for r in store.query_raw(a.uuid, T0, T0 + S)]
    with pytest.raises(InvalidArgument):
        store.query_raw(a.uuid, T0 + 1, T0)


def test_query_gpu_raw_is_get_gpu_and_query_raw(store: Store) -> None:
    """The telemetry page's one read: the GPU and its page, as the two reads give them."""
    a, b = gpu(1), gpu(2)
    times = [T0, T0 + 1, T0 + S, T0 + 2 * S]
    store.write(grid([a, b], [UTIL, TEMP, POWER], times))
    cases: list[tuple[int, int, list[str] | None, int, tuple[int, str] | None]] = [
        (T0, T0 + 3 * S, None, 1000, None),
        (T0, T0 + 3 * S, [POWER, UTIL], 4, None),
        (T0, T0 + 3 * S, None, 5, (T0 + 1, TEMP)),
        (T0, T0 + S, None, 5, (T0 + 2 * S, TEMP)),  # the cursor is past the range
        (T0 + 2, T0 + S - 1, None, 1000, None),  # nothing inside
    ]
    for start, end, metrics, limit, after in cases:
        found, points = store.query_gpu_raw(b.uuid, start, end, metrics, limit, after)
        assert found == store.get_gpu(b.uuid) and found is not None
        assert points == store.query_raw(b.uuid, start, end, metrics, limit, after)
    assert store.query_gpu_raw("GPU-none", T0, T0 + 3 * S) == (None, [])
    with pytest.raises(InvalidArgument):
        store.query_gpu_raw(a.uuid, T0 + 1, T0)


def test_latest(store: Store) -> None:
    g = gpu(1)
    store.write(batch([(g, UTIL, T0 + S, 2.0), (g, TEMP, T0, 40.0)]))
    store.write(batch([(g, UTIL, T0, 1.0)]))  # late, older point: not the latest
    assert store.latest(g.uuid) == {
        UTIL: StoredPoint(UTIL, T0 + S, 2.0, T0),
        TEMP: StoredPoint(TEMP, T0, 40.0, T0 - S),
    }
    assert store.latest("GPU-unknown") == {}


def test_latest_within_one_batch(store: Store) -> None:
    g = gpu(2)
    store.write(batch([(g, UTIL, T0, 1.0), (g, UTIL, T0, 3.0)]))  # one point twice: last wins
    assert store.latest(g.uuid)[UTIL][1:3] == (T0, 3.0)
    assert [r[2] for r in store.query_raw(g.uuid, T0, T0)] == [3.0]
    store.write(batch([(g, UTIL, T0 + 2 * S, 5.0), (g, UTIL, T0 + S, 4.0)]))  # newest first
    assert store.latest(g.uuid)[UTIL][1:3] == (T0 + 2 * S, 5.0)


def test_hosts_and_metrics(store: Store) -> None:
    store.write(grid([gpu(1, "h-b"), gpu(2, "h-a")], [UTIL, TEMP], [T0]))
    assert store.list_hosts() == ["h-a", "h-b"]
    assert store.list_metrics() == sorted([UTIL, TEMP])


def test_list_gpus_filters_and_paging(store: Store) -> None:
    gpus = sorted((gpu(n) for n in range(12)), key=lambda g: gpu_key(g.uuid))
    store.write(grid(gpus, [UTIL], [T0, T0 + S]))
    listed = store.list_gpus()
    assert [s.uuid for s in listed] == [g.uuid for g in gpus]
    first = store.get_gpu("GPU-0000")
    assert first is not None
    assert (first.hostname, first.gpu, first.device, first.model) == (
        "host-00",
        0,
        "nvidia0",
        "NVIDIA H100 80GB HBM3",
    )
    assert (first.first_seen_ns, first.last_seen_ns) == (T0, T0 + S)
    on_host_01 = [g.uuid for g in gpus if g.hostname == "host-01"]
    assert [s.uuid for s in store.list_gpus(hostname="host-01")] == on_host_01
    assert store.list_gpus(model="other") == []
    page1 = store.list_gpus(limit=5)
    page2 = store.list_gpus(limit=5, after_uuid=page1[-1].uuid)
    assert [s.uuid for s in page1 + page2] == [g.uuid for g in gpus[:10]]
    assert store.get_gpu(gpus[3].uuid) == listed[3]
    assert store.get_gpu("GPU-unknown") is None


def test_same_index_on_many_hosts_stays_apart(store: Store) -> None:
    gpus = [gpu(n, host=f"host-{n:02d}", index=0) for n in range(31)]
    gpus.sort(key=lambda g: gpu_key(g.uuid))
    store.write(grid(gpus, [UTIL], [T0]))
    found = store.gpus_by_index(0)
    assert [s.uuid for s in found] == [g.uuid for g in gpus]
    assert {s.hostname for s in found} == {g.hostname for g in gpus}
    assert store.gpus_by_index(5) == []
    assert len(store.count_points(metric=UTIL)) == 31


def test_k8s_tags_only_when_present(store: Store) -> None:
    plain, placed = gpu(1), gpu(2, container="trainer", pod="job-0", namespace="ml")
    store.write(grid([plain, placed], [UTIL], [T0]))
    a, b = store.get_gpu(plain.uuid), store.get_gpu(placed.uuid)
    assert a is not None and (a.container, a.pod, a.namespace) == ("", "", "")
    assert b is not None and (b.container, b.pod, b.namespace) == ("trainer", "job-0", "ml")


@pytest.mark.parametrize(
    ("agg", "expected"), [("mean", 2.0), ("min", 1.0), ("max", 3.0), ("last", 3.0)]
)
def test_downsample(store: Store, agg: str, expected: float) -> None:
    g = gpu(1)
    minute = 60 * S
    base = T0 - T0 % minute
    store.write(
        batch(
            [
                (g, UTIL, base + S, 1.0),
                (g, UTIL, base + 2 * S, 3.0),
                (g, UTIL, base + 2 * S - 1, 2.0),
                (g, UTIL, base + minute, 9.0),
                (g, TEMP, base + S, 50.0),
            ]
        )
    )
    got = store.downsample(g.uuid, base, base + minute, [UTIL], minute, agg)  # type: ignore[arg-type]
    assert [(w.metric, w.time_ns) for w in got] == [(UTIL, base), (UTIL, base + minute)]
    assert got[0].value == pytest.approx(expected)
    assert got[1].value == pytest.approx(9.0)
    both = store.downsample(g.uuid, base, base + minute - 1, None, minute, "max")
    assert [(w.metric, w.time_ns, w.value) for w in both] == [(TEMP, base, 50.0), (UTIL, base, 3.0)]


INJECTIONS = [
    'x") |> drop(columns: ["uuid"]) |> yield(name: "',
    'GPU-0001" or r.uuid != "',
    "x\\",
    'a\\"b',
    "${string(v: 1)}",
    'x\nfrom(bucket: "_internal")',
    "GPU-0001' OR \"uuid\" != '",
    "x'; DROP MEASUREMENT \"gpu_telemetry\"; SELECT 'x",
    'x"; DROP DATABASE "db',
]


@pytest.mark.parametrize("evil", INJECTIONS)
def test_injection_rejected_or_harmless(store: Store, evil: str) -> None:
    store.write(grid([gpu(1)], [UTIL], [T0]))
    calls = [
        lambda: store.query_points(evil, 0, T0 + S),
        lambda: store.query_points("GPU-0001", 0, T0 + S, metrics=[evil]),
        lambda: store.latest(evil),
        lambda: store.latest_of([evil, "GPU-0001"], [evil]),
        lambda: store.get_gpu(evil),
        lambda: store.list_gpus(hostname=evil, model=evil, after_uuid=evil),
        lambda: store.list_gpus(model=evil),
        lambda: [g for g in store.list_gpus(after_uuid=evil) if g.uuid != "GPU-0001"],
        lambda: store.gpus_by_index(0, limit=1) and store.page_names("host", after=evil)[:0],
        lambda: [h for h in store.page_names("host", after=evil) if h != "host-00"],
        lambda: store.count_points(uuid=evil),
        lambda: store.downsample(evil, 0, T0 + S, [evil], S, "mean"),
    ]
    for call in calls:
        try:
            result = call()
        except InvalidArgument:
            continue  # rejected with a clear error before reaching the store
        assert not result, f"{evil!r} returned data: {result!r}"
    assert store.count_points() == {(gpu(1).uuid, UTIL): 1}  # nothing was dropped


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.query_points("GPU-1", 2, 1),
        lambda s: s.query_points("GPU-1", -1, 1),
        lambda s: s.query_points("", 0, 1),
        lambda s: s.query_points("GPU-1", 0, 1, limit=0),
        lambda s: s.query_points("GPU-1", 0, 1, metrics=[]),
        lambda s: s.query_points("GPU-1", 0, 1, after=(1, "")),
        lambda s: s.downsample("GPU-1", 0, 1, None, 0, "mean"),
        lambda s: s.downsample("GPU-1", 0, 1, None, 1, "median"),
        lambda s: s.gpus_by_index(-1),
        lambda s: s.list_gpus(limit=0),
    ],
)
def test_bad_arguments_rejected(store: Store, call) -> None:
    with pytest.raises(InvalidArgument):
        call(store)


@pytest.mark.parametrize("bad", ["a\\b", "a\nb", ""])
def test_unstorable_tags_rejected(store: Store, bad: str) -> None:
    with pytest.raises(InvalidBatch):
        store.write(batch([(gpu(1), bad or "", T0, 1.0)]))
    with pytest.raises(InvalidBatch):
        store.write(batch([(gpu(1, host=bad or "h\\", index=0), UTIL, T0, 1.0)]))
    assert store.count_points() == {}


def test_non_finite_value_rejected(store: Store) -> None:
    with pytest.raises(InvalidBatch):
        store.write(batch([(gpu(1), UTIL, T0, float("nan"))]))


def test_escaped_tags_round_trip(store: Store) -> None:
    g = gpu(1, host="rack 1,row=2 'b\"", index=3)
    odd = "odd metric,name=x 'q' \"d\""
    store.write(batch([(g, odd, T0, 1.0)]))
    assert store.list_hosts() == [g.hostname]
    assert store.list_metrics() == [odd]
    assert store.query_points(g.uuid, T0, T0)[0].metric == odd
    assert store.query_points(g.uuid, T0, T0, [odd], after=(T0 - 1, odd))[0].metric == odd
    assert [s.uuid for s in store.list_gpus(hostname=g.hostname)] == [g.uuid]
    assert set(store.latest(g.uuid)) == {odd}


def test_ping(store: Store) -> None:
    store.ping()


def test_influx_down_raises_unavailable(tmp_path) -> None:
    server = InfluxServer(require_influxd(), tmp_path)
    server.start()
    conn = server.create_database()
    store = open_store("influx", **conn.store_opts())
    try:
        store.write(grid([gpu(1)], [UTIL], [T0]))
        # Series are indexed as InfluxDB 2.x indexes them (TSI, files in each shard), not in
        # 1.8's default in-memory index.
        assert list(tmp_path.glob("data/*/*/*/index")), "the test server indexes with TSI"
        prepared = store.prepare(grid([gpu(1)], [UTIL], [T0 + 2 * S]))
        server.stop()
        with pytest.raises(StoreUnavailable):
            store.write_prepared(prepared)
        with pytest.raises(StoreUnavailable):
            store.ping()
        with pytest.raises(StoreUnavailable):
            store.write(grid([gpu(1)], [UTIL], [T0 + S]))
        with pytest.raises(StoreUnavailable):
            store.query_points(gpu(1).uuid, T0, T0 + S)
        server.start()
        store.ping()
        store.write(grid([gpu(1)], [UTIL], [T0 + S]))
        store.write_prepared(prepared)  # the same body, sent again once InfluxDB is back
        assert store.count_points() == {(gpu(1).uuid, UTIL): 3}
    finally:
        store.close()
        server.stop()


def test_sqlite_unusable_path_raises(tmp_path) -> None:
    with pytest.raises(StoreUnavailable):
        open_store(f"sqlite:{tmp_path / 'missing-dir' / 'x.db'}")

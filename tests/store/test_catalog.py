"""The GPU catalog contract, on a real SQLite file and a real InfluxDB 1.8 server.

Lists come from the catalog only (store.catalog): these tests pin what it must hold after
writes, descriptor changes, redeliveries by a new process, and a backfill of old data.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from collector.pending import merge
from proto.batch import Gpu, PointBatch
from store import Store, open_store, schema
from store.catalog import REFRESH_NS, gpu_key, name_key, shard_of
from store.influx_catalog import gpu_slot
from store.sqlite import SqliteStore
from tests.fixtures.influx import InfluxServer
from tests.store.helpers import T0, S, batch, grid

UTIL, TEMP = "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP"
H100, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"
GRANULARITY_S = 10
Opener = Callable[..., Store]


@pytest.fixture(params=["sqlite", "influx"])
def opener(request: pytest.FixtureRequest, tmp_path) -> Iterator[Opener]:
    """Return a function opening (another) store on the same fresh database."""
    opened: list[Store] = []
    if request.param == "sqlite":
        spec, opts = f"sqlite:{tmp_path / 'telemetry.db'}", {}
    else:
        server: InfluxServer = request.getfixturevalue("influx_server")
        spec, opts = "influx", server.create_database().store_opts()

    def open_one(write_catalog: bool = True) -> Store:
        store = open_store(spec, GRANULARITY_S, write_catalog, **opts)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


def make(n: int, host: str, model: str = H100, index: int | None = None, **k8s: str) -> Gpu:
    return Gpu(
        uuid=f"GPU-{n:04d}",
        hostname=host,
        gpu=n % 8 if index is None else index,
        device=f"nvidia{n % 8}",
        model=model,
        **k8s,
    )


def fleet(count: int) -> list[Gpu]:
    return [make(n, f"node-{n // 4:02d}", H100 if n % 3 else A100) for n in range(count)]


def test_entries_appear_with_their_span_and_names(opener: Opener) -> None:
    store = opener()
    g = make(1, "node-a", pod="train-0", namespace="ml")
    assert store.list_gpus() == []
    store.write(grid([g], [UTIL, TEMP], [T0, T0 + S]))
    [entry] = store.list_gpus()
    assert (entry.uuid, entry.hostname, entry.gpu, entry.model) == (g.uuid, "node-a", 1, H100)
    assert (entry.device, entry.pod, entry.namespace, entry.container) == (
        "nvidia1", "train-0", "ml", "",
    )  # fmt: skip
    assert (entry.first_seen_ns, entry.last_seen_ns) == (T0, T0 + S)
    assert store.get_gpu(g.uuid) == entry
    assert store.page_names("host") == ["node-a"]
    assert store.page_names("metric") == [TEMP, UTIL]
    assert store.page_names("model") == [H100]
    assert store.list_hosts() == ["node-a"] and store.list_metrics() == [TEMP, UTIL]


def test_descriptor_changes_are_followed(opener: Opener) -> None:
    store = opener()
    before = make(1, "node-a", pod="job-1")
    store.write(grid([before], [UTIL], [T0]))
    moved = make(1, "node-b", pod="job-2", index=5)
    store.write(grid([moved], [UTIL], [T0 + S]))
    [entry] = store.list_gpus()
    assert (entry.hostname, entry.gpu, entry.pod) == ("node-b", 5, "job-2")
    assert (entry.first_seen_ns, entry.last_seen_ns) == (T0, T0 + S)
    assert store.get_gpu(before.uuid) == entry
    assert store.list_gpus(hostname="node-a") == []
    assert store.list_gpus(hostname="node-b") == [entry]
    assert store.gpus_by_index(before.gpu) == [] and store.gpus_by_index(5) == [entry]
    # A change of a field that is no filter (the pod) needs no new point time either.
    store.write(grid([make(1, "node-b", pod="job-3", index=5)], [UTIL], [T0 + S]))
    found = store.get_gpu(before.uuid)
    assert found is not None and found.pod == "job-3"
    # A value that becomes empty is followed too (an InfluxDB point rewritten in place keeps
    # the fields the new write leaves out).
    store.write(grid([make(1, "node-b", model="", index=5)], [UTIL], [T0 + 2 * S]))
    assert [(g.model, g.pod) for g in store.list_gpus()] == [("", "")]
    assert [g.model for g in store.list_gpus(hostname="node-b")] == [""]


def test_an_older_descriptor_never_replaces_the_newest_points(opener: Opener) -> None:
    """The descriptor is the newest point's: a replay, a late batch or a batch mixing both
    descriptors (a redelivery after a move) leaves it alone and only widens the span."""
    old, new = make(1, "node-old", model=A100), make(1, "node-new")
    store = opener()
    store.write(grid([old], [UTIL], [T0]))
    store.write(grid([new], [UTIL], [T0 + 3 * S]))

    def check(reader: Store, first_ns: int, filters_exact: bool = True) -> None:
        entry = reader.get_gpu(new.uuid)
        assert entry is not None and (entry.hostname, entry.model) == ("node-new", H100)
        assert (entry.first_seen_ns, entry.last_seen_ns) == (first_ns, T0 + 3 * S)
        assert reader.list_gpus() == [entry]
        assert reader.list_gpus(hostname="node-new") == [entry]
        assert reader.list_gpus(hostname="node-old") == []
        if filters_exact:
            assert reader.list_gpus(model="A100") == []

    store.write(grid([old], [UTIL], [T0]))  # redelivered to the same process
    check(store, T0)
    mixed = PointBatch(
        gpus=[old, new], metrics=[UTIL], gpu_index=[1, 0], metric_index=[0, 0],
        time_ns=[T0 + 3 * S, T0 + S], value=[3.0, 1.0], source_time_ns=[T0, T0],
    )  # fmt: skip
    store.write(mixed)  # a replay: both descriptors in one batch, the old one listed last
    check(store, T0)
    store.write(grid([old], [UTIL], [T0 - 5 * S]))  # a late point from before the move
    check(store, T0 - 5 * S)
    restarted = opener()  # a new collector process gets an old batch again
    restarted.write(grid([old], [UTIL], [T0 + 2 * S]))
    # On InfluxDB that writer's own record holds the old descriptor: lists, lookups and
    # hostname filters merge it away, a filter on an old model or index still finds it
    # (docs/storage.md).
    for reader in (store, restarted):
        check(reader, T0 - 5 * S, filters_exact=isinstance(store, SqliteStore))


def test_last_seen_advances_within_its_granularity(opener: Opener) -> None:
    store = opener()
    g = make(1, "node-a")
    granularity = GRANULARITY_S * S
    newest = T0
    store.write(grid([g], [UTIL], [T0]))
    for step in (3 * S, 4 * S, 5 * S, 9 * S, 30 * S, S // 2):
        newest += step
        store.write(batch([(g, UTIL, newest, 1.0)]))
        entry = store.get_gpu(g.uuid)
        assert entry is not None and entry.first_seen_ns == T0
        assert newest - granularity < entry.last_seen_ns <= newest
        # Every list shows the same entry (on InfluxDB a later `last_seen` is written alone
        # onto the record's point in both the shard's and the host's series).
        assert store.list_gpus() == store.list_gpus(hostname="node-a") == [entry]
        assert store.gpus_by_index(g.gpu) == store.list_gpus(model="h100") == [entry]
    store.write(batch([(g, UTIL, T0 - S, 1.0)]))  # a late, older point: first_seen moves
    entry = store.get_gpu(g.uuid)
    assert entry is not None and entry.first_seen_ns == T0 - S


def test_pages_and_filters(opener: Opener) -> None:
    store = opener()
    gpus = fleet(40)
    store.write(grid(gpus, [UTIL], [T0]))
    everything = store.list_gpus(limit=1000)
    assert [e.uuid for e in everything] == sorted((g.uuid for g in gpus), key=gpu_key)
    seen: list[str] = []
    after = None
    while page := store.list_gpus(limit=7, after_uuid=after):
        seen += [e.uuid for e in page]
        after = page[-1].uuid
    assert seen == [e.uuid for e in everything]
    h100 = [e.uuid for e in everything if e.model == H100]
    assert [e.uuid for e in store.list_gpus(model="h100", limit=1000)] == h100
    assert [e.uuid for e in store.list_gpus(model="H100 80GB", limit=1000)] == h100
    assert [e.uuid for e in store.list_gpus(model="nvidia", limit=1000)] == seen
    assert store.list_gpus(model="L40S") == []
    on_node = [e.uuid for e in everything if e.hostname == "node-03"]
    assert [e.uuid for e in store.list_gpus(hostname="node-03")] == on_node and len(on_node) == 4
    a100_on_node = [e.uuid for e in everything if e.hostname == "node-03" and e.model == A100]
    assert [e.uuid for e in store.list_gpus(hostname="node-03", model="a100")] == a100_on_node
    page1 = store.list_gpus(hostname="node-03", limit=2)
    page2 = store.list_gpus(hostname="node-03", limit=2, after_uuid=page1[-1].uuid)
    assert [e.uuid for e in page1 + page2] == on_node
    index1 = [e.uuid for e in everything if e.gpu == 1]
    assert [e.uuid for e in store.gpus_by_index(1)] == index1
    assert [e.uuid for e in store.gpus_by_index(1, limit=2)] == index1[:2]
    hosts = sorted({g.hostname for g in gpus}, key=lambda h: name_key("host", h))
    assert store.page_names("host", limit=1000) == hosts
    assert store.page_names("host", limit=3, after=hosts[4]) == hosts[5:8]


def test_redelivered_points_do_not_duplicate_entries(opener: Opener) -> None:
    gpus = fleet(6)
    first = grid(gpus, [UTIL, TEMP], [T0, T0 + S])
    store = opener()
    store.write(first)
    store.write(first)  # redelivered to the same process
    expected = store.list_gpus()
    assert len(expected) == 6
    restarted = opener()  # a new collector process gets the same points again
    restarted.write(first)
    restarted.write(grid(gpus[:2], [UTIL], [T0 + S]))
    for reader in (store, restarted):
        assert reader.list_gpus() == expected
        assert reader.page_names("host") == store.page_names("host")
        assert reader.list_metrics() == [TEMP, UTIL]
    restarted.write(grid(gpus[:1], [UTIL], [T0 + 100 * S]))
    [moved_on, *rest] = [e for e in restarted.list_gpus() if e.uuid == gpus[0].uuid]
    assert rest == [] and (moved_on.first_seen_ns, moved_on.last_seen_ns) == (T0, T0 + 100 * S)


def test_a_flush_of_several_records_is_cataloged_as_they_would_be_one_by_one(
    opener: Opener,
) -> None:
    """The collector writes records merged into one batch, the catalog decided record by
    record (`Store.prepare(batch, parts)`): new GPUs moved on, re-described and widened
    within one flush, then a flush that only moves `last_seen`."""
    gpus = fleet(4)
    store = opener()
    elsewhere = make(1, "node-z")
    granularity = GRANULARITY_S * S

    def flush(parts: list[PointBatch]) -> None:
        store.write_prepared(store.prepare(merge(parts), parts))

    flush([
        grid(gpus, [UTIL, TEMP], [T0]),  # all new
        grid(gpus, [UTIL, TEMP], [T0 + granularity + S]),  # past the granularity: moved on
        grid([elsewhere], [UTIL], [T0 + granularity + 2 * S]),  # GPU 1 moved to node-z
        grid(gpus[2:3], [UTIL], [T0 - 5 * S]),  # a late point of GPU 2
    ])  # fmt: skip
    spans = {e.uuid: (e.hostname, e.first_seen_ns, e.last_seen_ns) for e in store.list_gpus()}
    later = T0 + granularity + S
    assert spans == {
        gpus[0].uuid: (gpus[0].hostname, T0, later),
        gpus[1].uuid: ("node-z", T0, later + S),
        gpus[2].uuid: (gpus[2].hostname, T0 - 5 * S, later),
        gpus[3].uuid: (gpus[3].hostname, T0, later),
    }
    on_old_host = [e.uuid for e in store.list_gpus(hostname=gpus[1].hostname)]
    assert sorted(on_old_host) == sorted(g.uuid for g in gpus if g is not gpus[1])
    assert [e.uuid for e in store.list_gpus(hostname="node-z")] == [gpus[1].uuid]
    assert "node-z" in store.list_hosts()
    newest = later + 2 * granularity
    moved_on = [make(1, "node-z") if g.uuid == elsewhere.uuid else g for g in gpus]
    flush([grid(moved_on, [UTIL], [later + 2 * S]), grid(moved_on, [UTIL], [newest])])
    assert {e.uuid: (e.first_seen_ns, e.last_seen_ns) for e in store.list_gpus()} == {
        g.uuid: (T0 - 5 * S if g is gpus[2] else T0, newest) for g in gpus
    }
    assert store.get_gpu(gpus[1].uuid) == store.list_gpus(hostname="node-z")[0]
    # Moved away and back within one flush: the record of the way back is the one that holds.
    away = make(3, "node-y")
    flush([grid([away], [UTIL], [newest + S]), grid(gpus[3:], [UTIL], [newest + 2 * S])])
    assert store.list_gpus(hostname="node-y") == []
    assert gpus[3].uuid in [e.uuid for e in store.list_gpus(hostname=gpus[3].hostname)]
    entry = store.get_gpu(gpus[3].uuid)
    assert entry is not None and entry.hostname == gpus[3].hostname


def test_points_only_from_the_future_leave_the_span_alone(opener: Opener) -> None:
    """A writer new to a GPU (empty caches) stores future-only points: the span stays."""
    g = make(1, "node-a")
    opener().write(grid([g], [UTIL], [T0, T0 + S]))
    year_2099 = 4_070_908_800 * S
    later = opener()
    later.write(batch([(g, UTIL, year_2099, 1.0)]))
    entry = later.get_gpu(g.uuid)
    assert entry is not None and (entry.first_seen_ns, entry.last_seen_ns) == (T0, T0 + S)
    [listed] = later.list_gpus()
    assert listed == entry
    assert later.count_points(g.uuid) == {(g.uuid, UTIL): 3}


def test_each_writer_follows_the_others_changes(opener: Opener) -> None:
    """Two writers on one store (two collectors, a partition moving): spans merge."""
    g = make(1, "node-a")
    a, b = opener(), opener()
    a.write(grid([g], [UTIL], [T0]))
    b.write(grid([make(1, "node-b")], [UTIL], [T0 + 2 * S]))
    a.write(grid([g], [UTIL], [T0 + S]))  # `a` knows this GPU: nothing to update for it
    for reader in (a, b):
        found = reader.get_gpu(g.uuid)
        assert found is not None and (found.first_seen_ns, found.last_seen_ns) == (T0, T0 + 2 * S)
    # `a` rewrites its record once its own last_seen is a granularity old: the catalog
    # follows the newest writer again (between two writers it may lag by that much).
    newest = T0 + GRANULARITY_S * S
    a.write(grid([g], [UTIL], [newest]))
    found = b.get_gpu(g.uuid)
    assert found is not None and found.hostname == "node-a" and found.last_seen_ns == newest


def test_backfill_builds_the_catalog_from_stored_points(opener: Opener) -> None:
    old = opener(write_catalog=False)  # data written before the catalog existed
    gpus = fleet(10)
    old.write(grid(gpus, [UTIL, TEMP], [T0, T0 + 2 * S]))
    old.write(grid(gpus[:3], [UTIL], [T0 + 5 * S]))
    assert old.list_gpus() == [] and old.list_hosts() == []
    store = opener()
    assert store.backfill_catalog() == 10
    listed = store.list_gpus(limit=100)
    assert [e.uuid for e in listed] == sorted((g.uuid for g in gpus), key=gpu_key)
    last = {e.uuid: e.last_seen_ns for e in listed}
    assert all(e.first_seen_ns == T0 for e in listed)
    assert {last[g.uuid] for g in gpus[:3]} == {T0 + 5 * S}
    assert {last[g.uuid] for g in gpus[3:]} == {T0 + 2 * S}
    assert store.list_hosts() == sorted({g.hostname for g in gpus})
    assert store.list_metrics() == [TEMP, UTIL]
    assert store.page_names("model") == [A100, H100]
    assert store.backfill_catalog() == 10  # run twice: still one entry per GPU
    assert store.list_gpus(limit=100) == listed


@pytest.mark.parametrize("kind", ["sqlite", "influx"])
def test_backfill_command(kind: str, tmp_path, request: pytest.FixtureRequest) -> None:
    """`gputel-store backfill-catalog` run as its own process, settings as a user gives them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUTEL_")}
    if kind == "sqlite":
        spec, opts, args = f"sqlite:{tmp_path / 't.db'}", {}, [f"sqlite:{tmp_path / 't.db'}"]
    else:
        server: InfluxServer = request.getfixturevalue("influx_server")
        opts = server.create_database().store_opts()
        spec, args = "influx", ["influx", "--influx-url", opts["url"]]
        env |= {"GPUTEL_INFLUX_BUCKET": opts["bucket"], "GPUTEL_INFLUX_TOKEN": opts["token"]}
    gpus = fleet(5)
    with open_store(spec, None, False, **opts) as old:
        old.write(grid(gpus, [UTIL], [T0, T0 + S]))
    command = [str(Path(sys.executable).parent / "gputel-store"), "backfill-catalog", "--store"]
    done = subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["gpus"] == 5
    assert opts.get("token", "") not in done.stdout + done.stderr or not opts
    with open_store(spec, **opts) as store:
        assert len(store.list_gpus()) == 5 and store.list_metrics() == [UTIL]
    bad = subprocess.run([*command, "sqlite:"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "sqlite store needs a path" in bad.stderr


def test_odd_descriptors_round_trip(opener: Opener) -> None:
    """Quotes, commas, spaces and `=` in every catalog value (a JSON string field on InfluxDB)."""
    store = opener()
    odd = Gpu(
        uuid='GPU-"odd", =x',
        hostname="rack 1,row=2",
        gpu=3,
        device='nvidia "3"',
        model='Model {"x": 1}',
        container="c,=1",
        pod='p "q"',
        namespace="n s",
    )
    store.write(grid([odd], [UTIL], [T0]))
    [entry] = store.list_gpus()
    assert (entry.uuid, entry.hostname, entry.device, entry.model) == (
        odd.uuid, odd.hostname, odd.device, odd.model,
    )  # fmt: skip
    assert (entry.container, entry.pod, entry.namespace) == (odd.container, odd.pod, odd.namespace)
    assert store.list_gpus(model='{"X"') == [entry]
    assert store.list_gpus(hostname="rack 1,row=2", after_uuid=entry.uuid) == []
    assert store.page_names("model") == [odd.model]


def test_sqlite_file_from_before_the_catalog_is_migrated_then_backfilled(tmp_path) -> None:
    """A file with the pre-catalog schema opens (columns added) and the backfill lists it."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE gpus (id INTEGER PRIMARY KEY, uuid TEXT NOT NULL UNIQUE,"
            " hostname TEXT NOT NULL, gpu INTEGER NOT NULL, device TEXT NOT NULL,"
            " model TEXT NOT NULL, container TEXT NOT NULL, pod TEXT NOT NULL,"
            " namespace TEXT NOT NULL);"
            "CREATE INDEX gpus_by_index ON gpus (gpu, uuid);"
            "CREATE TABLE points (gpu_id INTEGER NOT NULL, time_ns INTEGER NOT NULL,"
            " metric TEXT NOT NULL, value REAL NOT NULL, source_time_ns INTEGER NOT NULL,"
            " PRIMARY KEY (gpu_id, time_ns, metric)) WITHOUT ROWID;"
            "CREATE TABLE latest (gpu_id INTEGER NOT NULL, metric TEXT NOT NULL,"
            " time_ns INTEGER NOT NULL, value REAL NOT NULL, source_time_ns INTEGER NOT NULL,"
            " PRIMARY KEY (gpu_id, metric)) WITHOUT ROWID;"
            "INSERT INTO gpus VALUES"
            " (1, 'GPU-old', 'node-a', 0, 'nvidia0', 'NVIDIA H100', '', '', '');"
        )
        conn.executemany(
            "INSERT INTO points VALUES (1, ?, ?, 1.0, 0)", [(T0, UTIL), (T0 + S, UTIL)]
        )
        conn.execute("INSERT INTO latest VALUES (1, ?, ?, 1.0, 0)", (UTIL, T0 + S))
    with open_store(f"sqlite:{path}") as store:
        assert store.list_gpus() == [] and store.list_hosts() == []
        assert store.backfill_catalog() == 1
        [entry] = store.list_gpus(model="h100")
        assert (entry.uuid, entry.first_seen_ns, entry.last_seen_ns) == ("GPU-old", T0, T0 + S)
        assert store.list_hosts() == ["node-a"] and store.list_metrics() == [UTIL]
        store.write(grid([make(2, "node-b")], [UTIL], [T0]))  # new writes keep the catalog
        assert len(store.list_gpus()) == 2


def test_a_record_lost_under_its_writer_comes_back_within_the_refresh(
    influx_server: InfluxServer,
) -> None:
    """InfluxDB: a later `last_seen` alone onto a dropped record lists nothing broken, and
    the writer's next whole record (at most REFRESH_NS later) brings the GPU back."""
    conn = influx_server.create_database()
    g = make(1, "node-a")
    with open_store("influx", GRANULARITY_S, **conn.store_opts()) as store:
        store.write(grid([g], [UTIL], [T0]))
        for measurement in (schema.CATALOG_MEASUREMENT, schema.HOSTS_MEASUREMENT):
            influx_v1(influx_server, conn.bucket, f'DROP MEASUREMENT "{measurement}"')
        store.write(grid([g], [UTIL], [T0 + GRANULARITY_S * S]))  # `last_seen` alone
        assert store.list_gpus() == store.list_gpus(hostname="node-a") == []
        assert store.get_gpu(g.uuid) is None
        later = T0 + REFRESH_NS + GRANULARITY_S * S
        store.write(grid([g], [UTIL], [later]))
        [entry] = store.list_gpus()
        assert (entry.hostname, entry.model, entry.last_seen_ns) == ("node-a", H100, later)
        assert store.list_gpus(hostname="node-a") == [entry] == [store.get_gpu(g.uuid)]


def influx_v1(server: InfluxServer, db: str, q: str) -> None:
    """Run one InfluxQL statement on database `db`."""
    body = urllib.parse.urlencode({"q": q, "db": db}).encode()
    with urllib.request.urlopen(server.url + "/query", data=body, timeout=10) as resp:
        assert b'"error"' not in resp.read()


def test_records_of_the_earlier_influx_layout_are_read(influx_server: InfluxServer) -> None:
    """InfluxDB: catalog points written before `last` was a field (identity in fields in both
    series, `last_seen` only in the JSON) list as they did, then move on with new writes."""
    conn = influx_server.create_database()
    g = make(1, "node-a")
    slot = gpu_slot(g.uuid, T0)
    record = json.dumps({"first": T0, "last": T0 + S, "device": g.device, "anchor": T0})
    fields = f'uuid="{g.uuid}",gpu="{g.gpu}",model="{H100}",record={json.dumps(record)}'
    shard = f"{schema.CATALOG_MEASUREMENT},shard={shard_of(g.uuid):03d}"
    body = "\n".join([
        f'{shard} {fields},hostname="node-a" {slot}',
        f"{schema.HOSTS_MEASUREMENT},hostname=node-a {fields} {slot}",
    ])  # fmt: skip
    influx_v1_write(influx_server, conn.bucket, body)
    with open_store("influx", GRANULARITY_S, **conn.store_opts()) as store:
        [entry] = store.list_gpus()
        assert (entry.uuid, entry.hostname, entry.gpu, entry.model, entry.device) == (
            g.uuid, "node-a", g.gpu, H100, g.device,
        )  # fmt: skip
        assert (entry.first_seen_ns, entry.last_seen_ns) == (T0, T0 + S)
        assert store.list_gpus(hostname="node-a") == [entry] == [store.get_gpu(g.uuid)]
        later = T0 + 3 * GRANULARITY_S * S  # a new writer: its own record, newer last_seen
        store.write(grid([g], [UTIL], [later]))
        store.write(grid([g], [UTIL], [later + GRANULARITY_S * S]))  # then `last` alone
        [moved_on] = store.list_gpus()
        assert (moved_on.first_seen_ns, moved_on.last_seen_ns) == (T0, later + GRANULARITY_S * S)
        assert store.list_gpus(hostname="node-a") == [moved_on]


def influx_v1_write(server: InfluxServer, db: str, body: str) -> None:
    """Write line protocol to database `db` through the v1 `/write` endpoint."""
    url = f"{server.url}/write?{urllib.parse.urlencode({'db': db, 'precision': 'ns'})}"
    with urllib.request.urlopen(url, data=body.encode(), timeout=10) as resp:
        assert resp.status == 204

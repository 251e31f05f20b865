"""InfluxQL text and the `/query` client, against the real InfluxDB 1.8 test server.

The store's hot reads go through `/query` (store.v1query): these pin how a bucket maps to a
database and retention policy (the DBRP mapping InfluxDB 2.x applies the same way), how
errors map onto the store's error tree, and that caller values cannot leave their literal.
"""

from __future__ import annotations

import struct

import msgpack
import pytest
import urllib3

from store import StoreError, StoreUnavailable, open_store
from store.influxql import any_of, ident, points, string
from store.v1query import MSGPACK, QueryClient, _decode, dbrp
from tests.fixtures.broker import free_port
from tests.fixtures.influx import InfluxServer
from tests.store.helpers import T0, S, gpu, grid

UTIL = "DCGM_FI_DEV_GPU_UTIL"


def test_literals_escape_quotes_and_backslashes() -> None:
    assert string("it's") == "'it\\'s'"
    assert string("a\\'b") == "'a\\\\\\'b'"
    assert ident('sh"ard') == '"sh\\"ard"'
    assert any_of("shard", ["001", "002"]) == "(\"shard\" = '001' OR \"shard\" = '002')"
    for bad in ("a\nb", "a\rb", "a\x00b"):
        with pytest.raises(ValueError):
            string(bad)
        with pytest.raises(ValueError):
            ident(bad)


def test_a_value_stays_inside_its_literal_on_the_server(influx_server: InfluxServer) -> None:
    conn = influx_server.create_database()
    with open_store("influx", **conn.store_opts()) as store:
        store.write(grid([gpu(1)], [UTIL], [T0]))
    client = QueryClient(conn.url, conn.bucket, conn.token)
    try:
        for evil in ["GPU-0001' OR 'a' = 'a", "GPU-0001\\' OR uuid =~ /.*/ OR 'x", "x'; SELECT 1"]:
            assert client.series(points(evil, 0, T0 + S, None, 10)) == []
        [series] = client.series(points(gpu(1).uuid, 0, T0 + S, None, 10))
        assert series.columns == ["time", UTIL, f"{UTIL}@source_time"]  # a row per time
        assert series.values == [[T0, 0.0, T0 - S]]  # ns exact, epoch=ns
    finally:
        client.close()


def test_bucket_maps_to_database_and_retention_policy(influx_server: InfluxServer) -> None:
    assert dbrp("telemetry") == {"db": "telemetry"}
    assert dbrp("telemetry/autogen") == {"db": "telemetry", "rp": "autogen"}
    conn = influx_server.create_database()
    opts = conn.store_opts() | {"bucket": f"{conn.bucket}/autogen"}
    with open_store("influx", **opts) as store:
        store.write(grid([gpu(1)], [UTIL], [T0, T0 + S]))
        assert [g.uuid for g in store.list_gpus()] == [gpu(1).uuid]
        assert len(store.query_raw(gpu(1).uuid, T0, T0 + S)) == 2
    opts["bucket"] = f"{conn.bucket}/no_such_rp"
    with open_store("influx", **opts) as store, pytest.raises(StoreError, match="no_such_rp"):
        store.query_raw(gpu(1).uuid, T0, T0 + S)


def test_errors_map_onto_the_store_error_tree(influx_server: InfluxServer) -> None:
    conn = influx_server.create_database()
    client = QueryClient(conn.url, conn.bucket, conn.token)
    try:
        with pytest.raises(StoreError, match="error parsing query") as bad:
            client.series("SELECT FROM nothing")
        assert not isinstance(bad.value, StoreUnavailable)  # a bad query is not an outage
        missing = QueryClient(conn.url, "no_such_db", conn.token)
        with pytest.raises(StoreError, match="database not found") as gone:
            missing.series(points("GPU-1", 0, 1, None, 1))
        missing.close()
        assert not isinstance(gone.value, StoreUnavailable)
        a, b = client.results([points("GPU-1", 0, 1, None, 1)] * 2)
        assert a == b == []
    finally:
        client.close()
    down = QueryClient(f"http://127.0.0.1:{free_port()}", conn.bucket, conn.token, 2_000)
    with pytest.raises(StoreUnavailable):
        down.series(points("GPU-1", 0, 1, None, 1))


def test_answers_come_in_messagepack_and_read_as_their_json(influx_server: InfluxServer) -> None:
    """influxd encodes MessagePack with less CPU than JSON; both must read the same."""
    conn = influx_server.create_database()
    with open_store("influx", **conn.store_opts()) as store:
        store.write(grid([gpu(1)], [UTIL, "DCGM_FI_DEV_POWER_USAGE"], [T0, T0 + S]))
    statement = points(gpu(1).uuid, 0, T0 + S, None, 10)
    bodies = {}
    for accept in (MSGPACK, "application/json"):
        resp = urllib3.PoolManager().request(
            "POST", f"{conn.url}/query", headers={"Accept": accept}, encode_multipart=False,
            fields={"db": conn.bucket, "epoch": "ns", "q": statement},
        )  # fmt: skip
        assert resp.status == 200
        bodies[accept] = _decode(resp.headers["Content-Type"], resp.data)
        assert resp.headers["Content-Type"].startswith(accept)  # the server honours it
    assert bodies[MSGPACK] == bodies["application/json"]
    [series] = bodies[MSGPACK]["results"][0]["series"]
    assert series["values"][0][:3] == [T0, 0.0, T0 - S]  # ns exact, a float stays a float
    assert isinstance(series["values"][0][1], float) and len(series["values"][0]) == 5
    client = QueryClient(conn.url, conn.bucket, conn.token)
    try:
        [read] = client.series(statement)
        assert read.values == series["values"]
    finally:
        client.close()
    # a server that sends Go times, not `epoch=ns` integers: msgp's extension, or the standard one
    go_time = msgpack.ExtType(5, struct.pack(">qI", T0 // S, T0 % S + 7))
    std_time = msgpack.Timestamp.from_unix_nano(T0 + 7)
    for t in (go_time, std_time):
        assert _decode(MSGPACK, msgpack.packb({"t": [t]})) == {"t": [T0 + 7]}
    with pytest.raises(ValueError):
        _decode(MSGPACK, b"\x93\x01")  # cut short
    with pytest.raises(ValueError):
        _decode("application/json", b"[1, 2]")  # not an object

"""The InfluxDB test server's settling, which `bench.fleet_bench.settle` relies on.

A benchmark that measured while influxd still replayed a cache or compacted a shard
would charge that work to the pages it measures: `InfluxServer.compacted()` must say
"done" only once every write is in TSM and each shard is one file.
"""

from __future__ import annotations

from pathlib import Path

from store import open_store
from tests.fixtures.influx import InfluxServer, require_influxd
from tests.store.helpers import T0, S, gpu, grid

UTIL, TEMP = "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP"


def test_compacted_only_once_every_write_is_in_one_tsm_file_per_shard(tmp_path: Path) -> None:
    server = InfluxServer(require_influxd(), tmp_path, snapshot_cold_s=1, compact_cold_s=1)
    server.start()
    try:
        conn = server.create_database()
        with open_store("influx", **conn.store_opts()) as store:
            store.write(grid([gpu(1), gpu(2)], [UTIL, TEMP], [T0, T0 + S]))
            assert not server.compacted()  # in the cache and the WAL
            server.wait_compacted(60)
            first = server.tsm_files()
            assert first and set(first.values()) == {1}

            # A second write to the same shard: a second TSM file once snapshotted, then
            # one again once fully compacted. Not done in between.
            store.write(grid([gpu(1), gpu(3)], [UTIL, TEMP], [T0 + 2 * S]))
            assert not server.compacted()
            server.wait_compacted(60)
            assert set(server.tsm_files().values()) == {1}
            assert not any(p.stat().st_size for p in tmp_path.rglob("*.wal"))
            counts = store.count_points()
        assert counts[(gpu(1).uuid, UTIL)] == 3
        assert counts[(gpu(3).uuid, TEMP)] == 1
        assert sum(counts.values()) == 12
    finally:
        server.stop()

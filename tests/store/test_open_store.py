"""open_store parsing and the SQLite store's thread-safety (no InfluxDB needed)."""

from __future__ import annotations

import threading

import pytest

from store import InvalidArgument, StoreError, influx_settings, open_store
from store.influx import InfluxStore
from store.sqlite import SqliteStore
from tests.store.helpers import T0, S, gpu, grid, on_threads


def test_sqlite_spec(tmp_path) -> None:
    with open_store(f"sqlite:{tmp_path / 'a.db'}") as store:
        assert isinstance(store, SqliteStore)


def test_sqlite_commits_are_on_disk_unless_asked_otherwise(tmp_path) -> None:
    def synchronous(store) -> int:  # PRAGMA synchronous: 2 = FULL (WAL fsynced per commit)
        with store:
            return int(store._conn().execute("PRAGMA synchronous").fetchone()[0])

    path = f"sqlite:{tmp_path / 'a.db'}"
    assert synchronous(open_store(path)) == 2
    assert synchronous(open_store(path, sqlite_synchronous="full")) == 2
    assert synchronous(open_store(path, sqlite_synchronous="normal")) == 1
    with pytest.raises(InvalidArgument, match="synchronous"):
        SqliteStore(tmp_path / "b.db", synchronous="off")


def test_sqlite_connections_read_through_a_memory_map(tmp_path) -> None:
    """Writer and readers map the file (store.sqlite: cache misses of a large file)."""
    with open_store(f"sqlite:{tmp_path / 'a.db'}") as store:
        store.write(grid([gpu(1)], ["DCGM_FI_DEV_GPU_UTIL"], [T0, T0 + S]))
        sizes = [int(store._conn().execute("PRAGMA mmap_size").fetchone()[0])]
        reader = threading.Thread(
            target=lambda: sizes.append(
                int(store._conn().execute("PRAGMA mmap_size").fetchone()[0])
            )
        )
        reader.start()
        reader.join()
    assert len(sizes) == 2 and min(sizes) >= 1024**3, sizes


@pytest.mark.parametrize("spec", ["", "sqlite:", "postgres:x", "influx:http://x"])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(InvalidArgument):
        open_store(spec)


def test_influx_settings_from_env_when_called(monkeypatch) -> None:
    monkeypatch.setenv("GPUTEL_INFLUX_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("GPUTEL_INFLUX_BUCKET", "db/rp")
    monkeypatch.setenv("GPUTEL_INFLUX_TOKEN", "u:p")
    assert influx_settings(org="o") == {
        "url": "http://127.0.0.1:1", "org": "o", "bucket": "db/rp", "token": "u:p",
    }  # fmt: skip
    assert influx_settings(url="http://h:2")["url"] == "http://h:2"
    with open_store("influx") as store:
        assert isinstance(store, InfluxStore) and store.bucket == "db/rp"


def test_influx_settings_missing(monkeypatch) -> None:
    for name in ("URL", "ORG", "BUCKET", "TOKEN"):
        monkeypatch.delenv(f"GPUTEL_INFLUX_{name}", raising=False)
    with pytest.raises(InvalidArgument, match="GPUTEL_INFLUX_URL"):
        open_store("influx")


def test_sqlite_shared_between_threads(tmp_path) -> None:
    store = SqliteStore(tmp_path / "t.db")

    def writer(n: int) -> None:
        for i in range(20):
            store.write(grid([gpu(n)], ["m"], [T0 + i * S]))
            store.query_points(gpu(n).uuid, T0, T0 + 100 * S)

    on_threads(writer, 4)
    assert store.count_points() == {(gpu(n).uuid, "m"): 20 for n in range(4)}
    store.close()
    with pytest.raises(StoreError):
        store.list_hosts()

"""Rewrite a cached fleet InfluxDB's catalog from the per-GPU-series layout to the current one.

The issue-18 layout change (`store.influx_catalog`: one series per catalog shard) makes
the cached `fleet-influx-*-v1` folders unreadable by the store; refilling one takes
minutes (100,000 GPUs: ~4 min) and the backfill reads every series. This copies the old
catalog records (`gpu_catalog`, `gpu_catalog_names`) into the new layout shard by shard,
so the same folder holds both layouts and `fleet_probe`-style runs can time them side by
side. `python -m bench.fleet_relayout DATA_DIR` (a copy of the cached folder) prints JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import orjson

from store import catalog, influx_catalog, influxql
from store.catalog import CatalogUpdate, GpuRecord, NameRecord
from store.v1query import QueryClient
from tests.fixtures.influx import InfluxServer, influxd_path

OLD_GPUS, OLD_NAMES = "gpu_catalog", "gpu_catalog_names"
OLD_GPU_COLUMNS = ("record", "uuid", "hostname", "gpu", "model")


def old_gpus(client: QueryClient, shard: int) -> list[GpuRecord]:
    """Every record of one shard in the old layout (its point time was its anchor)."""
    clause = influxql.eq("shard", f"{shard:03d}")
    columns = ", ".join(influxql.ident(c) for c in OLD_GPU_COLUMNS)
    found = client.series(f"SELECT {columns} FROM {OLD_GPUS} WHERE {clause}")
    out = []
    for series in found:
        for anchor, record, uuid, host, index, model in series.values:
            body = orjson.loads(record)
            fields = (uuid, host or "", int(index or 0), str(body.get("device", "")),
                      model or "", str(body.get("container", "")), str(body.get("pod", "")),
                      str(body.get("namespace", "")))  # fmt: skip
            out.append(GpuRecord(fields, int(anchor), int(body["first"]), int(body["last"]),
                                 bool(body.get("moved"))))  # fmt: skip
    return out


def old_names(client: QueryClient) -> list[NameRecord]:
    """Every name record in the old layout."""
    found = client.series(f'SELECT "seen", "kind", "name" FROM {OLD_NAMES}')
    return [NameRecord(k, n, int(t)) for s in found for t, _, k, n in s.values]


def relayout(url: str, write: object) -> dict[str, float]:
    """Copy the old catalog into the new layout; return counts and seconds."""
    client = QueryClient(url, "fleet", "-", timeout_ms=600_000)
    started, gpus = time.perf_counter(), 0
    for shard in range(catalog.GPU_SHARDS):
        records = old_gpus(client, shard)
        gpus += len(records)
        write(influx_catalog.encode(CatalogUpdate(tuple(records))))  # type: ignore[operator]
    names = old_names(client)
    write(influx_catalog.encode(CatalogUpdate((), tuple(names))))  # type: ignore[operator]
    return {"gpu_records": gpus, "names": len(names), "seconds": time.perf_counter() - started}


def main(root: Path) -> dict[str, float]:
    """Start influxd on `root`, relayout its catalog, stop it."""
    import urllib3

    server = InfluxServer(influxd_path(), root, start_timeout_s=900)
    server.start()
    pool = urllib3.PoolManager()

    def write(body: bytes) -> None:
        resp = pool.request("POST", f"{server.url}/write?db=fleet&precision=ns", body=body)
        if resp.status != 204:
            raise RuntimeError(f"write failed: {resp.status} {resp.data[:300]!r}")

    try:
        return relayout(server.url, write)
    finally:
        server.stop()


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1])), indent=2))

"""The GPU-list cache: pages come from memory for `catalog_cache_s`, then from the store again."""

from __future__ import annotations

import dataclasses
import time

from gateway.app import create_app
from gateway.config import GatewayConfig
from store import open_store
from tests.gateway import data


def list_uuids(client) -> list[str]:
    resp = client.get("/api/v1/gpus")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    return [g["uuid"] for g in resp.get_json()["gpus"]]


def test_a_new_gpu_shows_up_once_the_cached_page_expires(tmp_path):
    config = GatewayConfig(store=f"sqlite:{tmp_path / 'db'}", catalog_cache_s=0.3)
    with open_store(config.store) as store:
        store.write(data.points((data.gpu(1, 0),), (data.T0,)))
        client = create_app(config).test_client()
        before = list_uuids(client)
        store.write(data.points((data.gpu(2, 0),), (data.T0,)))
        assert list_uuids(client) == before  # served from memory
        time.sleep(0.35)
        assert len(list_uuids(client)) == len(before) + 1


def test_no_cache_when_turned_off(tmp_path):
    config = dataclasses.replace(
        GatewayConfig(store=f"sqlite:{tmp_path / 'db'}"), catalog_cache_s=0
    )
    with open_store(config.store) as store:
        store.write(data.points((data.gpu(1, 0),), (data.T0,)))
        client = create_app(config).test_client()
        assert len(list_uuids(client)) == 1
        store.write(data.points((data.gpu(2, 0),), (data.T0,)))
        assert len(list_uuids(client)) == 2

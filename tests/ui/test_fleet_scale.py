"""The fleet page on a fleet of thousands of GPUs: drawn from a few pages of latest values.

It asked /api/v1/gpus/{uuid} once per GPU (5,000 GPUs took 48-53 s to draw); now
the number of API requests follows the number of 1,000-GPU pages, not of GPUs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from selenium.webdriver.common.by import By

from gateway.config import GatewayConfig
from proto.batch import Gpu, PointBatch
from store import open_store
from tests.gateway.conftest import Gateway
from tests.ui.test_browser import api_calls, forget_requests, page_is_clean, requested, wait_ready

UTIL, TEMP = "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP"
FLEET = 2_500  # three pages of 1,000
GPUS = [
    Gpu(f"GPU-{n:05d}-big", f"node-{n // 8:04d}", n % 8, f"nvidia{n % 8}", "H100")
    for n in range(FLEET)
]


def util(n: int) -> float:
    return float(n % 97)


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("big")
    now = time.time_ns()
    batch = PointBatch(gpus=GPUS, metrics=[UTIL, TEMP])
    for n in range(FLEET):
        for m, value in ((0, util(n)), (1, 40.0)):
            batch.gpu_index.append(n)
            batch.metric_index.append(m)
            batch.time_ns.append(now)
            batch.value.append(value)
            batch.source_time_ns.append(now)
    with open_store(f"sqlite:{folder / 'big.db'}") as store:
        store.write(batch)
    gateway = Gateway(GatewayConfig(store=f"sqlite:{folder / 'big.db'}"), folder / "gw.log")
    try:
        yield gateway
    finally:
        gateway.stop()


def test_a_fleet_of_thousands_draws_from_one_request_per_page(big, browser):
    forget_requests(browser)
    started = time.monotonic()
    browser.get(big.url + "/ui/")
    wait_ready(browser, "#fleet", gpus=str(FLEET))
    drawn_s = time.monotonic() - started
    cells = {
        c.get_attribute("data-uuid"): c.get_attribute("data-value")
        for c in browser.find_elements(By.CSS_SELECTOR, "#fleet a.gpu")
    }
    assert cells == {g.uuid: f"{util(n):g}" for n, g in enumerate(GPUS)}
    urls = requested(browser)
    calls = api_calls(urls, big)
    pages = [c for c in calls if c.startswith("/api/v1/latest?")]
    assert len(pages) == 3 and all(f"metric={UTIL}" in p for p in pages), pages
    assert not [c for c in calls if c.startswith("/api/v1/gpus/")]
    assert len(calls) <= 6, calls  # + one page each of metrics, hosts and GPUs (model list)
    page_is_clean(browser, big, urls=urls)
    print(f"{FLEET} GPUs drawn in {drawn_s:.1f} s with {len(calls)} API requests")

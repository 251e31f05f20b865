"""The web view on data a user did not plan for: a GPU the API cannot name (stored before the
streamer refused such uuids), metric names that are JavaScript built-ins, a token without the
read role. The page degrades to what it can show and says what it could not."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
import time
from collections.abc import Iterator

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from gateway.config import GatewayConfig
from proto.batch import Gpu, PointBatch
from store import open_store
from tests.gateway.conftest import Gateway
from tests.ui.test_browser import wait_ready
from walbroker.tokens import new_token, token_line

UTIL = "DCGM_FI_DEV_GPU_UTIL"
GOOD = [Gpu(f"GPU-good-{i}", "h1", i, f"nvidia{i}", "NVIDIA H100") for i in range(3)]
DOTS = Gpu("..", "h2", 0, "nvidia0", "NVIDIA H100")  # browsers resolve it away from the path


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> Iterator[tuple[Gateway, GatewayConfig]]:
    folder = tmp_path_factory.mktemp("odd")
    now = time.time_ns()
    batch = PointBatch(gpus=[*GOOD, DOTS], metrics=[UTIL, "constructor"])
    for gi in range(4):
        batch.gpu_index.append(gi)
        batch.metric_index.append(0)
        batch.time_ns.append(now)
        batch.value.append(10.0 * (gi + 1))
        batch.source_time_ns.append(now)
    batch.gpu_index.append(0)  # only the first GPU has a `constructor`
    batch.metric_index.append(1)
    batch.time_ns.append(now)
    batch.value.append(5.0)
    batch.source_time_ns.append(now)
    with open_store(f"sqlite:{folder / 'odd.db'}") as store:
        store.write(batch)
    config = GatewayConfig(store=f"sqlite:{folder / 'odd.db'}")
    gateway = Gateway(config, folder / "gateway.log", workers=1, threads=4)
    try:
        yield gateway, config
    finally:
        gateway.stop()


def test_a_gpu_no_path_can_name_gets_its_value_from_the_page_of_latest_values(odd, browser):
    """`..` could not be asked for at /api/v1/gpus/{uuid} (the browser resolves the path
    away): its cell stayed empty with an error. The page's values come in one request."""
    odd, _ = odd
    browser.get(odd.url + "/ui/")
    wait_ready(browser, "#fleet", gpus="4")
    cells = {
        c.get_attribute("data-uuid"): c.get_attribute("data-value")
        for c in browser.find_elements(By.CSS_SELECTOR, "#fleet a.gpu")
    }
    assert cells == {"GPU-good-0": "10", "GPU-good-1": "20", "GPU-good-2": "30", "..": "40"}
    assert not browser.find_element(By.ID, "error").is_displayed()


def test_values_the_store_cannot_read_leave_the_fleet_drawn(odd, browser, tmp_path):
    """The latest values fail (here SQLite's `latest` table is gone under a running
    gateway: a 503) while the GPU list answers: every GPU is drawn without a value and the
    error box says why, instead of a page left "loading"."""
    _, config = odd
    broken = tmp_path / "broken.db"
    shutil.copy(config.store.removeprefix("sqlite:"), broken)
    gateway = Gateway(
        dataclasses.replace(config, store=f"sqlite:{broken}"), tmp_path / "gw.log", workers=1
    )
    try:
        assert gateway.get("/api/v1/gpus/GPU-good-0")[0] == 200  # the worker opened the store
        with sqlite3.connect(broken) as conn:
            conn.execute("DROP TABLE latest")
        assert gateway.get(f"/api/v1/latest?metric={UTIL}")[0] == 503
        browser.get(gateway.url + "/ui/")
        wait_ready(browser, "#fleet", gpus="4")
        values = {
            c.get_attribute("data-value")
            for c in browser.find_elements(By.CSS_SELECTOR, "#fleet a.gpu")
        }
        assert values == {""}
        error = browser.find_element(By.ID, "error")
        assert error.is_displayed()
        assert "latest values could not be read" in error.text and "503" in error.text
    finally:
        gateway.stop()


def test_a_metric_named_like_a_javascript_builtin_is_just_a_name(odd, browser):
    """`constructor` found Object's built-in on every GPU: NaN values and a NaN legend."""
    odd, _ = odd
    browser.get(odd.url + "/ui/?metric=constructor")
    wait_ready(browser, "#fleet", gpus="4")
    assert Select(browser.find_element(By.ID, "metric")).first_selected_option.text == "constructor"
    values = {
        c.get_attribute("data-uuid"): c.get_attribute("data-value")
        for c in browser.find_elements(By.CSS_SELECTOR, "#fleet a.gpu")
    }
    assert values == {"GPU-good-0": "5", "GPU-good-1": "", "GPU-good-2": "", "..": ""}
    legend = "".join(browser.find_element(By.ID, f"legend-{end}").text for end in ("min", "max"))
    assert "NaN" not in legend and "NaN" not in browser.find_element(By.ID, "fleet").text


def test_a_token_without_the_read_role_brings_the_form_back(odd, browser, tmp_path):
    """A 403 only showed an error: the form stayed hidden for good, even after a reload."""
    odd, config = odd
    reader, producer = new_token(), new_token()
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(
        token_line("viewer", ["read"], reader, []) + "\n"
        + token_line("feeder", ["produce"], producer, []) + "\n"
    )  # fmt: skip
    tokens.chmod(0o600)
    config = dataclasses.replace(config, auth_tokens=str(tokens))
    locked = Gateway(config, tmp_path / "locked.log", workers=1, threads=4)
    try:
        browser.get(locked.url + "/ui/")
        browser.execute_script("sessionStorage.setItem('gputel.token', arguments[0])", producer)
        browser.get(locked.url + "/ui/")
        form = browser.find_element(By.ID, "token-form")
        deadline = time.monotonic() + 30
        while not form.is_displayed() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert form.is_displayed() and form.get_attribute("data-rejected") == "forbidden"
        field = browser.find_element(By.ID, "token")
        assert "read role" in field.get_attribute("placeholder")
        field.send_keys(reader)
        form.find_element(By.CSS_SELECTOR, "button").click()
        wait_ready(browser, "#fleet", gpus="4")
    finally:
        browser.execute_script("sessionStorage.clear()")
        locked.stop()

"""The web view's fleet page on a large fleet: time from navigation to drawn, and API requests.

The store holds `gpus` GPUs (random-format uuids, 8 a host; `bench.fleet_data`) x 10 metrics,
one scrape 30 s ago, written through `Store.write` into a fresh SQLite file or a fresh
database of a real InfluxDB 1.8.10 (`tests.fixtures.influx`). A real `gputel-gateway`
(gunicorn, 2 workers) serves it; Debian's headless chromium (as `tests/ui`) opens `/ui/`
`runs` times. Per run: seconds from `get` to the fleet's `data-state="ready"` with every
GPU drawn, and the number of requests to /api/ (from chromium's performance log).

`python -m bench.fleet_view_bench [GPUS [sqlite|influx [RUNS]]]` prints JSON.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from bench.fleet_data import S, fleet, scrape
from gateway.config import GatewayConfig
from store import open_store
from tests.fixtures.influx import InfluxServer, influxd_path
from tests.gateway.conftest import Gateway

TIMEOUT_S = 600.0


def browser(profile: Path) -> webdriver.Chrome:
    """A headless chromium logging the network (the options of tests/ui/conftest.py)."""
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-extensions",
                "--window-size=1400,1000", f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    driver.set_page_load_timeout(TIMEOUT_S)
    driver.set_script_timeout(TIMEOUT_S)
    return driver


def api_requests(driver: webdriver.Chrome) -> int:
    """Requests to /api/ since the last call."""
    count = 0
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            count += "/api/" in msg["params"]["request"]["url"]
    return count


def draw(driver: webdriver.Chrome, url: str, gpus: int) -> dict[str, float]:
    """Open the fleet page once; seconds until every GPU is drawn, and the API requests."""
    api_requests(driver)
    started = time.monotonic()
    driver.get(url + "/ui/")
    while time.monotonic() - started < TIMEOUT_S:
        state = driver.execute_script("return {...document.getElementById('fleet').dataset}")
        if state.get("state") == "ready" and state.get("gpus") == str(gpus):
            return {
                "drawn_s": round(time.monotonic() - started, 2),
                "api_requests": api_requests(driver),
            }
        time.sleep(0.05)
    raise TimeoutError(f"fleet page not drawn in {TIMEOUT_S} s")


def fill(opts: dict[str, Any], spec: str, gpus: int) -> None:
    fleet_gpus = fleet(gpus)
    now = time.time_ns()
    with open_store(spec, **opts) as store:
        for i in range(0, gpus, 500):
            store.write(scrape(fleet_gpus[i : i + 500], now - 30 * S))


def run(gpus: int = 5_000, kind: str = "sqlite", runs: int = 3) -> dict[str, Any]:
    """Figures per run (see the module docstring)."""
    root = Path(tempfile.mkdtemp(prefix="gputel-fleet-view-"))
    server = None
    try:
        if kind == "influx":
            server = InfluxServer(influxd_path(), root / "influx")
            server.start()
            conn = server.create_database()
            fill(conn.store_opts(), "influx", gpus)
            config = GatewayConfig(store="influx", influx_url=conn.url, influx_org=conn.org,
                                   influx_bucket=conn.bucket, influx_token=conn.token)  # fmt: skip
        else:
            fill({}, f"sqlite:{root / 'fleet.db'}", gpus)
            config = GatewayConfig(store=f"sqlite:{root / 'fleet.db'}")
        gateway = Gateway(config, root / "gateway.log")
        driver = browser(root / "profile")
        try:
            results = [draw(driver, gateway.url, gpus) for _ in range(runs)]
        finally:
            driver.quit()
            gateway.stop()
        return {"gpus": gpus, "store": kind, "runs": results}
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    result = run(int(args[0]) if args else 5_000, args[1] if len(args) > 1 else "sqlite",
                 int(args[2]) if len(args) > 2 else 3)  # fmt: skip
    print(json.dumps(result, indent=2))

"""The fleet page on a fleet of thousands of GPUs: drawn from a few pages of latest values.

It asked /api/v1/gpus/{uuid} once per GPU (5,000 GPUs took 48-53 s to draw); now
the number of API requests follows the number of 1,000-GPU pages, not of GPUs. It also
read the whole GPU list (/api/v1/gpus?limit=10000, page after page) only to fill its model
filter, and drew nothing before the last page had arrived: the model names now come from
/api/v1/models and the tiles are drawn page by page.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from gateway.config import GatewayConfig
from proto.batch import Gpu, PointBatch
from store import open_store
from store.catalog import gpu_key
from tests.gateway.conftest import Gateway
from tests.ui.test_browser import (
    api,
    api_calls,
    forget_requests,
    page_is_clean,
    requested,
    wait_ready,
)

UTIL, TEMP = "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP"
FLEET = 2_500  # three pages of 1,000
H100 = "H100"
# The two GPUs last in catalog order (on the last page of the fleet) are the only ones of
# their models: a model list made from the first pages of GPUs would miss them.
LAST = sorted((f"GPU-{n:05d}-big" for n in range(FLEET)), key=gpu_key)[-2:]
RARE = dict(zip(LAST, ("A100 (rare)", "L40S (rare)"), strict=True))
GPUS = [
    Gpu(
        uuid := f"GPU-{n:05d}-big", f"node-{n // 8:04d}", n % 8, f"nvidia{n % 8}",
        RARE.get(uuid, H100),
    )
    for n in range(FLEET)
]  # fmt: skip


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


class Proxy:
    """A loopback HTTP proxy in front of the gateway that the browser talks to instead.

    `hold(path)`: the first request it is true for waits until `release` is set (`holding`
    is set meanwhile), so a test sees the page while that answer is still pending.
    `rewrite(path)`: the path sent on to the gateway. `paths`: every path asked, in order.
    """

    def __init__(
        self,
        target: str,
        hold: Callable[[str], bool] = lambda path: False,
        rewrite: Callable[[str], str] = lambda path: path,
    ) -> None:
        self.target = urllib.parse.urlsplit(target).netloc
        self.hold, self.rewrite = hold, rewrite
        self.holding, self.release, self.passed = (threading.Event() for _ in range(3))
        self.paths: list[str] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()  # headers and body are two writes: no Nagle delay between
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self) -> None:
                held = False
                with proxy._lock:
                    proxy.paths.append(self.path)
                    if not proxy.holding.is_set() and proxy.hold(self.path):
                        proxy.holding.set()
                        held = True
                if held:
                    proxy.release.wait(120)
                conn = http.client.HTTPConnection(proxy.target, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                    conn.request("GET", proxy.rewrite(self.path), headers=headers)
                    resp = conn.getresponse()
                    body = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for name, value in resp.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                if held:
                    proxy.passed.set()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def asked(self, prefix: str) -> list[str]:
        with self._lock:
            return [p for p in self.paths if p.startswith(prefix)]


def wait_for(browser, selector: str, timeout_s: float = 30.0, **data: str) -> dict:
    """Wait until the element's data-* match `data` (any state); return its dataset."""
    deadline = time.monotonic() + timeout_s
    ds = None
    while time.monotonic() < deadline:
        ds = browser.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? {...e.dataset} : null",
            selector,
        )
        if ds and all(ds.get(k) == v for k, v in data.items()):
            return ds
        time.sleep(0.1)
    raise AssertionError(f"{selector} never matched {data}: {ds}; {browser.get_log('browser')}")


def is_next_page(path: str) -> bool:
    return path.startswith("/api/v1/latest?") and "cursor=" in path


def test_a_fleet_of_thousands_draws_from_one_request_per_page(big, browser):
    forget_requests(browser)
    started = time.monotonic()
    browser.get(big.url + "/ui/")
    wait_ready(browser, "#fleet", gpus=str(FLEET))
    drawn_s = time.monotonic() - started
    tiles = browser.execute_script(  # one round trip: 2,500 attribute reads took ~50 s
        "return [...document.querySelectorAll('#fleet a.gpu')]"
        ".map((c) => [c.dataset.uuid, c.dataset.value]);"
    )
    cells = dict(map(tuple, tiles))
    assert len(cells) == len(tiles)
    assert cells == {g.uuid: f"{util(n):g}" for n, g in enumerate(GPUS)}
    urls = requested(browser)
    calls = api_calls(urls, big)
    pages = [c for c in calls if c.startswith("/api/v1/latest?")]
    assert len(pages) == 3 and all(f"metric={UTIL}" in p for p in pages), pages
    assert not [c for c in calls if c.startswith("/api/v1/gpus")], calls  # no GPU list at all
    assert "/api/v1/models?limit=1000" in calls, calls
    assert len(calls) <= 6, calls  # + one page each of metrics, hosts and models
    assert not browser.find_element(By.ID, "truncated").is_displayed()
    page_is_clean(browser, big, urls=urls)
    print(f"{FLEET} GPUs drawn in {drawn_s:.1f} s with {len(calls)} API requests")


def test_the_model_filter_offers_the_models_of_the_last_page_too(big, browser):
    """The two rare models are held by GPUs on the fleet's last page only. The proxy makes
    pages small (a GPU list of 10 a page, one model name a page), as a fleet of 100,000 GPUs
    makes them many: the page read 20 pages of the GPU list for its model filter and missed
    both. Now it reads every page of /api/v1/models; choosing one shows just its GPU."""

    def small(path: str) -> str:
        if path.startswith("/api/v1/gpus?"):
            return path.replace("limit=10000", "limit=10")
        if path.startswith("/api/v1/models?"):
            return path.replace("limit=1000", "limit=1")
        return path

    with Proxy(big.url, rewrite=small) as proxy:
        forget_requests(browser)
        browser.get(proxy.url + "/ui/")
        wait_ready(browser, "#fleet", gpus=str(FLEET))
        model = Select(browser.find_element(By.ID, "model"))
        options = [o.get_attribute("value") for o in model.options]
        assert options == ["", *api(big, "/api/v1/models")["models"]]
        assert options == ["", *sorted({H100, *RARE.values()})]
        assert len(proxy.asked("/api/v1/models?")) == 3  # one name a page
        assert not proxy.asked("/api/v1/gpus"), proxy.paths
        model.select_by_value(RARE[LAST[-1]])
        wait_ready(browser, "#fleet", gpus="1")
        cells = browser.find_elements(By.CSS_SELECTOR, "#fleet a.gpu")
        assert [c.get_attribute("data-uuid") for c in cells] == [LAST[-1]]
        page_is_clean(browser, proxy)


def test_tiles_are_drawn_while_later_pages_are_still_pending(big, browser):
    """The proxy holds the answer of the second page of latest values: the first page's
    1,000 tiles are on the page meanwhile (it drew nothing before the last page)."""
    with Proxy(big.url, hold=is_next_page) as proxy:
        forget_requests(browser)
        browser.get(proxy.url + "/ui/")
        assert proxy.holding.wait(60), proxy.paths  # the second page is asked for, and held
        ds = wait_for(browser, "#fleet", gpus="1000", pages="1")
        assert ds["state"] == "loading"
        assert len(browser.find_elements(By.CSS_SELECTOR, "#fleet a.gpu")) == 1000
        assert "loading" in browser.find_element(By.ID, "summary").text
        assert len(proxy.asked("/api/v1/latest?")) == 2 and not proxy.passed.is_set()
        proxy.release.set()
        wait_ready(browser, "#fleet", gpus=str(FLEET), pages="3")
        assert len(proxy.asked("/api/v1/latest?")) == 3
        assert "loading" not in browser.find_element(By.ID, "summary").text
        page_is_clean(browser, proxy)


def test_a_filter_chosen_mid_load_drops_the_older_load(big, browser):
    """The first load's second page is held; the user picks a model meanwhile. The new load
    is drawn, and the old one's page, answered afterwards, is dropped: no tile of it shows
    and it asks for no further page."""
    with Proxy(big.url, hold=is_next_page) as proxy:
        forget_requests(browser)
        browser.get(proxy.url + "/ui/")
        assert proxy.holding.wait(60), proxy.paths
        wait_for(browser, "#fleet", gpus="1000", pages="1")
        Select(browser.find_element(By.ID, "model")).select_by_value(RARE[LAST[0]])
        wait_ready(browser, "#fleet", gpus="1")
        proxy.release.set()
        assert proxy.passed.wait(30)  # the old load's page has been answered
        # Give the page time to take that answer in (a request of its own through the
        # proxy and the gateway, then a moment): a load that was not dropped would draw
        # its 2,000 GPUs and ask for the third page at once. A guard, not a proof.
        browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/api/v1/models').then((r) => r.json())"
            ".then(() => setTimeout(() => done(true), 200))"
        )
        assert wait_for(browser, "#fleet", gpus="1")["state"] == "ready"
        uuids = [
            c.get_attribute("data-uuid")
            for c in browser.find_elements(By.CSS_SELECTOR, "#fleet a.gpu")
        ]
        assert uuids == [LAST[0]]
        assert len([p for p in proxy.asked("/api/v1/latest?") if "cursor=" in p]) == 1


def test_a_fleet_past_the_page_cap_says_it_was_cut_short(big, browser):
    """The proxy turns the page's 1,000-GPU pages into 10-GPU ones: 2,500 GPUs are 250 pages,
    past the page's cap of 200. It stops at 2,000 GPUs and says so on the page."""

    def small(path: str) -> str:
        if path.startswith("/api/v1/latest?"):
            return path.replace("limit=1000", "limit=10")
        return path

    with Proxy(big.url, rewrite=small) as proxy:
        forget_requests(browser)
        browser.get(proxy.url + "/ui/")
        wait_ready(browser, "#fleet", timeout_s=120, truncated="true")
        assert browser.find_element(By.ID, "fleet").get_attribute("data-gpus") == "2000"
        assert len(proxy.asked("/api/v1/latest?")) == 200
        notice = browser.find_element(By.ID, "truncated")
        assert notice.is_displayed()
        assert "first 2000 GPUs" in notice.text and "200 pages" in notice.text
        page_is_clean(browser, proxy)


def test_a_host_list_past_its_page_cap_says_so_and_links_still_open(big, browser):
    """The proxy turns the host list's 1,000-name pages into 5-name ones: 313 hosts are 63
    pages, past the list's cap of 50. The list stops at 250 hosts and the page says so (it
    stopped silently before); a host past the cap still opens from its link."""

    def small(path: str) -> str:
        if path.startswith("/api/v1/hosts?"):
            return path.replace("limit=1000", "limit=5")
        return path

    last = GPUS[-1].hostname  # node-0312: on the 63rd page
    with Proxy(big.url, rewrite=small) as proxy:
        forget_requests(browser)
        browser.get(proxy.url + "/ui/")
        wait_for(browser, "#fleet", timeout_s=120, state="ready", listsCut="hosts")
        assert len(proxy.asked("/api/v1/hosts?")) == 50
        options = Select(browser.find_element(By.ID, "host")).options
        assert len(options) == 1 + 250 and last not in [o.get_attribute("value") for o in options]
        notice = browser.find_element(By.ID, "lists-cut")
        assert notice.is_displayed() and "first 250 hosts" in notice.text, notice.text
        page_is_clean(browser, proxy)

        browser.get(f"{proxy.url}/ui/?host={last}")
        wait_ready(browser, "#fleet", timeout_s=120, gpus="4")
        assert Select(browser.find_element(By.ID, "host")).first_selected_option.text == last
        tiles = browser.find_elements(By.CSS_SELECTOR, "#fleet a.gpu")
        assert sorted(t.get_attribute("data-uuid") for t in tiles) == sorted(
            g.uuid for g in GPUS if g.hostname == last
        )
        page_is_clean(browser, proxy)

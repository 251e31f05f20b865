"""The web view in a real headless chromium against a live gunicorn gateway with data.

Each page must render what the REST and Admin APIs say (the GPUs, a plot per metric with as
many points as the API returns for the page's query, the topics and the groups' lag), log no
console error and request nothing from any other host. A screenshot of each page is kept
under tests/ui/artifacts/ (gitignored).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.ui.conftest import ARTIFACTS, GPUS, GROUP, METRICS, TOPIC, UTIL


def api(web, path: str):
    with urllib.request.urlopen(web.url + path, timeout=30) as resp:
        return json.loads(resp.read())


def all_points(web, path: str) -> list[dict]:
    points, cursor = [], None
    while True:
        page = api(web, path + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else ""))
        points += page["points"]
        cursor = page["next_cursor"]
        if cursor is None:
            return points


def wait_ready(browser, selector: str, timeout_s: float = 60.0, **data: str) -> None:
    """Wait until the element's data-state is 'ready' (and its other data-* match)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ds = browser.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? {...e.dataset} : null",
            selector,
        )
        if ds and ds.get("state") == "ready" and all(ds.get(k) == v for k, v in data.items()):
            return
        time.sleep(0.1)
    raise AssertionError(f"{selector} not ready: {ds}; log: {browser.get_log('browser')}")


def requested(browser) -> list[str]:
    """The URLs the browser requested since the last call (the performance log drains)."""
    urls = []
    for entry in browser.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def forget_requests(browser) -> None:
    """Leave the current page (its scripts may still be fetching) and drain the log."""
    browser.get("about:blank")
    requested(browser)


def api_calls(urls: list[str], web) -> list[str]:
    """The paths (with queries) of the requests among `urls` that went to /api/."""
    paths = [u.removeprefix(web.url) for u in urls if u.startswith(web.url + "/")]
    return [p for p in paths if p.startswith("/api/")]


def page_is_clean(browser, web, prefix: str = "/ui/", urls: list[str] | None = None) -> None:
    """No console error, and every network request went to this gateway.

    (chromium's own chrome:// pages, e.g. the new-tab page it opens with, are not network.)
    `urls`: what `requested` returned, when the test read the log itself.
    """
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    urls = requested(browser) if urls is None else urls
    assert urls, "no request seen: the performance log is off"
    network = [u for u in urls if u.split(":", 1)[0] in ("http", "https", "ws", "wss", "ftp")]
    assert any(u.startswith(web.url + prefix) for u in network), network
    foreign = [u for u in network if not u.startswith(web.url + "/")]
    assert not foreign, foreign


def short_time(text: str) -> str:
    """The API's RFC 3339 time as the pages print it (common.js fmtTime)."""
    return text.replace("T", " ").split(".")[0].removesuffix("Z") + " UTC"


def shot(browser, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def test_root_redirects_to_the_web_view(web, browser):
    browser.get(web.url + "/")
    assert browser.current_url == web.url + "/ui/"


def test_fleet_page_shows_every_gpu_coloured_by_its_latest_value(web, browser):
    forget_requests(browser)
    browser.get(web.url + "/ui/")
    wait_ready(browser, "#fleet", gpus=str(len(GPUS)))
    urls = requested(browser)
    calls = api_calls(urls, web)  # the values come in one request, not one per GPU
    assert [c for c in calls if c.startswith("/api/v1/latest?")] == [
        f"/api/v1/latest?limit=1000&metric={UTIL}"
    ]
    assert not [c for c in calls if c.startswith("/api/v1/gpus/")], calls
    cells = browser.find_elements(By.CSS_SELECTOR, "#fleet a.gpu")
    assert sorted(c.get_attribute("data-uuid") for c in cells) == sorted(g.uuid for g in GPUS)
    assert Select(browser.find_element(By.ID, "metric")).first_selected_option.text == UTIL
    for cell in cells:  # the colour's value is the API's latest value of the metric
        uuid = cell.get_attribute("data-uuid")
        latest = {p["metric"]: p["value"] for p in api(web, f"/api/v1/gpus/{uuid}")["latest"]}
        assert float(cell.get_attribute("data-value")) == latest[UTIL]
        assert cell.get_attribute("href").endswith(f"/ui/gpus/{uuid}")
        assert "rgb" in cell.value_of_css_property("background-color")
    hosts = [h.get_attribute("data-host") for h in browser.find_elements(By.CSS_SELECTOR, ".host")]
    assert hosts == sorted({g.hostname for g in GPUS})
    shot(browser, "fleet")
    page_is_clean(browser, web, urls=urls)


def test_fleet_filters_by_host_and_model_and_searches_by_uuid(web, browser):
    browser.get(web.url + "/ui/")
    wait_ready(browser, "#fleet", gpus=str(len(GPUS)))
    Select(browser.find_element(By.ID, "host")).select_by_value("dgx-h100-002")
    wait_ready(browser, "#fleet", gpus="2")
    Select(browser.find_element(By.ID, "host")).select_by_value("")
    Select(browser.find_element(By.ID, "model")).select_by_value("NVIDIA A100-SXM4-80GB")
    wait_ready(browser, "#fleet", gpus="1")
    Select(browser.find_element(By.ID, "model")).select_by_value("")
    wait_ready(browser, "#fleet", gpus=str(len(GPUS)))
    browser.find_element(By.ID, "search").send_keys("GPU-x")  # no uuid holds it
    wait_ready(browser, "#fleet", gpus="0")
    browser.find_element(By.ID, "search").clear()
    browser.find_element(By.ID, "search").send_keys("GPU-21")
    wait_ready(browser, "#fleet", gpus="1")
    assert "q=GPU-21" in browser.current_url  # the filters are in the page's address
    browser.find_element(By.CSS_SELECTOR, "#fleet a.gpu").click()
    assert urllib.parse.urlsplit(browser.current_url).path == "/ui/gpus/GPU-21-ui"
    page_is_clean(browser, web)


def check_plots(web, browser, expect_every: str | None) -> None:
    wait_ready(browser, "#plots", plots=str(len(METRICS)))
    query = browser.execute_script("return document.querySelector('#plots').dataset.query")
    args = urllib.parse.parse_qs(query)
    assert args.get("every") == ([expect_every] if expect_every else None), args
    uuid = browser.find_element(By.ID, "gpu-title").get_attribute("data-uuid")
    points = all_points(web, f"/api/v1/gpus/{uuid}/telemetry?{query}")
    for metric in METRICS:
        want = [p for p in points if p["metric"] == metric]
        assert want, metric
        box = browser.find_element(By.CSS_SELECTOR, f'.plot[data-metric="{metric}"]')
        assert int(box.get_attribute("data-points")) == len(want)
        drawn = browser.execute_script(
            "const u = window.gputelPlots[arguments[0]]; return [u.data[0].length, u.data[1]]",
            metric,
        )
        assert drawn[0] == len(want) and drawn[1] == [p["value"] for p in want]
        assert box.find_elements(By.CSS_SELECTOR, "canvas"), "no canvas drawn"


def test_gpu_page_plots_each_metric_and_downsamples_long_windows(web, browser):
    gpu = GPUS[1]
    browser.get(web.url + f"/ui/gpus/{gpu.uuid}")
    check_plots(web, browser, None)  # 15 min: every point
    latest = api(web, f"/api/v1/gpus/{gpu.uuid}")["latest"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#latest tbody tr")
    assert [r.get_attribute("data-metric") for r in rows] == [p["metric"] for p in latest]
    for row, point in zip(rows, latest, strict=True):  # the source time, where known
        cells = [c.text for c in row.find_elements(By.CSS_SELECTOR, "td")]
        assert point["source_time"] and cells[3] == short_time(point["source_time"])
        assert cells[2] == short_time(point["time"]) != cells[3]
    text = browser.find_element(By.ID, "descriptor").text
    assert gpu.hostname in text and gpu.model in text and gpu.device in text
    shot(browser, "gpu")
    browser.find_element(By.CSS_SELECTOR, 'button[data-window="3600"]').click()
    check_plots(web, browser, "10s")
    browser.find_element(By.CSS_SELECTOR, 'button[data-window="86400"]').click()
    check_plots(web, browser, "5m")
    shot(browser, "gpu-24h")
    page_is_clean(browser, web)


def test_gpu_page_custom_window(web, browser):
    gpu = GPUS[0]
    browser.get(web.url + f"/ui/gpus/{gpu.uuid}")
    wait_ready(browser, "#plots", plots=str(len(METRICS)))
    # two hours ending half an hour ago, typed into the inputs in the browser's time zone
    browser.execute_script(
        """const end = Date.now() - 1800e3, start = end - 7200e3;
        const local = (ms) => new Date(ms - new Date(ms).getTimezoneOffset() * 60000)
            .toISOString().slice(0, 19);
        document.getElementById('from').value = local(start);
        document.getElementById('to').value = local(end);
        document.querySelector('#plots').dataset.state = 'loading';"""
    )
    browser.find_element(By.ID, "apply").click()
    check_plots(web, browser, "15s")
    page_is_clean(browser, web)


def test_pipeline_page_shows_topics_partitions_groups_and_lag(web, browser):
    browser.get(web.url + "/ui/pipeline")
    wait_ready(browser, "#pipeline", topics="1")
    topic = browser.find_element(By.CSS_SELECTOR, f'[data-topic="{TOPIC}"]')
    assert len(topic.find_elements(By.CSS_SELECTOR, "tbody tr")) == 4  # one row per partition
    group = browser.find_element(By.CSS_SELECTOR, f'[data-group="{GROUP}"]')
    head = group.find_element(By.CSS_SELECTOR, "h3").text
    assert "lag 20 points" in head, head  # 5 uncommitted points on each of 4 partitions
    tables = group.find_elements(By.CSS_SELECTOR, "table")
    member_rows = tables[0].find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(member_rows) == 1 and "127.0.0.1" in member_rows[0].text
    assert "ui-test-collector" in member_rows[0].text
    lag_rows = [r.text.split() for r in tables[1].find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert [(r[1], r[3], r[4], r[5]) for r in lag_rows] == [
        (str(p), "10", "15", "5") for p in range(4)
    ]
    wait_ready(browser, "#pipeline", timeout_s=20, refreshes="2")  # rates need two reads
    assert browser.find_element(By.ID, "rate-in").text == "0"  # nothing published meanwhile
    assert browser.find_element(By.ID, "store-health").text == "ready"
    assert browser.find_element(By.ID, "lag-total").text.startswith("20 points")
    shot(browser, "pipeline")
    page_is_clean(browser, web)


@pytest.mark.parametrize("path", ["/ui/", "/ui/pipeline", f"/ui/gpus/{GPUS[0].uuid}"])
def test_pages_forbid_other_origins(web, path):
    with urllib.request.urlopen(web.url + path, timeout=30) as resp:
        csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp


@pytest.mark.parametrize(
    "path", ["/swagger/", "/api/v1/gpus", "/api/v1/hosts?limit=0", "/openapi.json", "/metrics"]
)
def test_no_answer_can_be_framed_or_sniffed(web, path):
    """Only the web view's pages had a policy: /swagger/ and the API loaded in another
    site's frame, and API answers had no nosniff or cache rule."""
    try:
        resp = urllib.request.urlopen(web.url + path, timeout=30)
    except urllib.error.HTTPError as refused:  # a 400 problem+json carries them too
        resp = refused
    with resp:
        headers = resp.headers
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    if path.startswith("/api/"):
        assert headers["Cache-Control"] == "no-store"


def test_swagger_ui_works_under_its_policy(web, browser):
    """Swagger UI renders every operation of the document with the policy on (no inline
    script, nothing from another host) and logs no violation."""
    browser.get(web.url + "/swagger/")
    spec = api(web, "/openapi.json")
    expected = sum(len(item) for item in spec["paths"].values())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        blocks = browser.find_elements(By.CSS_SELECTOR, ".opblock")
        if len(blocks) >= expected:
            break
        time.sleep(0.2)
    assert len(blocks) == expected
    page_is_clean(browser, web, "/swagger/")

"""The web view of a gateway that requires bearer tokens: it asks for one, then works."""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.error
import urllib.request

import pytest
from selenium.webdriver.common.by import By

from tests.gateway.conftest import Gateway
from tests.ui.conftest import GPUS
from tests.ui.test_browser import wait_ready
from walbroker.tokens import new_token, token_line


@pytest.fixture(scope="module")
def locked(web):
    token = new_token()
    tokens = web.folder / "gateway-tokens.txt"
    tokens.write_text(token_line("viewer", ["read"], token, []) + "\n")
    tokens.chmod(0o600)
    config = dataclasses.replace(web.config, auth_tokens=str(tokens))
    gateway = Gateway(config, web.folder / "locked-gateway.log", workers=1, threads=4)
    try:
        yield gateway, token
    finally:
        gateway.stop()


def test_the_pipeline_relay_needs_a_token_like_the_api(locked):
    gateway, token = locked
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(gateway.url + "/ui/api/pipeline", timeout=10)
    with refused.value as answer:
        assert answer.code == 401
    req = urllib.request.Request(
        gateway.url + "/ui/api/pipeline", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.loads(resp.read())["topics"]


def test_the_page_asks_for_a_token_and_then_shows_the_fleet(locked, browser):
    gateway, token = locked
    browser.get(gateway.url + "/ui/")
    form = browser.find_element(By.ID, "token-form")
    deadline = time.monotonic() + 30
    while not form.is_displayed() and time.monotonic() < deadline:  # after the first 401
        time.sleep(0.1)
    assert form.is_displayed()
    browser.find_element(By.ID, "token").send_keys(token)
    form.find_element(By.CSS_SELECTOR, "button").click()
    wait_ready(browser, "#fleet", gpus=str(len(GPUS)))
    assert not browser.find_element(By.ID, "token-form").is_displayed()
    browser.get(gateway.url + "/ui/pipeline")  # the token is kept for this tab
    wait_ready(browser, "#pipeline", topics="1")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert all("401" in e["message"] for e in errors), errors  # only the first, refused calls
    browser.execute_script("sessionStorage.clear()")


def test_swagger_ui_with_auth_docs_uses_the_web_views_token(locked, browser, web):
    """With --auth-docs, /swagger/ answered 401 to a browser (a page cannot send a bearer
    header): the API docs were unreachable even with a token. The page is now open and
    fetches the document with the token the web view was given in this tab."""
    _, token = locked
    tokens = web.folder / "gateway-tokens.txt"  # the locked fixture's file: `viewer` = token
    config = dataclasses.replace(web.config, auth_tokens=str(tokens), auth_docs=True)
    docs = Gateway(config, web.folder / "docs-gateway.log", workers=1, threads=4)
    try:
        assert docs.get("/openapi.json")[0] == 401
        browser.get(docs.url + "/ui/")
        browser.execute_script("sessionStorage.setItem('gputel.token', arguments[0])", token)
        browser.get(docs.url + "/swagger/")
        deadline = time.monotonic() + 30
        while not browser.find_elements(By.CSS_SELECTOR, ".opblock"):
            assert time.monotonic() < deadline, browser.page_source[-2000:]
            time.sleep(0.2)
        assert "/api/v1/gpus" in browser.find_element(By.ID, "swagger-ui").text
    finally:
        browser.execute_script("sessionStorage.clear()")
        docs.stop()

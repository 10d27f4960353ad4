"""The Account tab in headless Chromium: a user makes a token (shown once), sees it listed, revokes it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.browser_helpers import BROWSER_MARKS, TIMEOUT_MS, open_tab, wait_for_text
from tests.http_helpers import USERS, LiveServer

pytestmark = BROWSER_MARKS
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture
def page(browser, server: LiveServer):
    context = browser.new_context(
        viewport={"width": 1280, "height": 900},
        http_credentials={"username": "bob", "password": USERS["bob"]},
    )
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    opened.goto(server.url + "/")
    opened.locator("#txt2img-prompt textarea").wait_for()
    yield opened
    context.close()


def _me(server: LiveServer, token: str) -> int:
    return httpx.get(
        f"{server.url}/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=60
    ).status_code


def test_a_user_makes_and_revokes_a_token_on_the_page(page, server: LiveServer) -> None:
    open_tab(page, "Account")
    wait_for_text(page, "account-user", "Signed in as bob")
    page.locator("#tab-account input[type=text], #tab-account textarea").first.fill("page token")
    page.locator("#account-create-token").click()
    box = page.locator("#account-new-token textarea, #account-new-token input").first
    box.wait_for(state="visible")
    page.wait_for_function(
        "() => (document.querySelector('#account-new-token textarea, #account-new-token input')?.value || '')"
        ".startsWith('sdw_')"
    )
    token = box.input_value()
    assert _me(server, token) == 200
    wait_for_text(page, "account-tokens", "page token")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-account.png"), full_page=True)

    token_id = token.split("_")[1]
    page.locator("#account-revoke-choice input").click()
    page.get_by_role("option", name=f"page token (sdw_{token_id}_…)").click()
    page.locator("#account-revoke").click()
    page.wait_for_function(
        "id => !(document.getElementById('account-tokens')?.innerText || '').includes(id)", arg=token_id
    )
    assert _me(server, token) == 401

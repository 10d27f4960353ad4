"""What the browser tests share: Debian's Chromium for Playwright, and the steps a user takes on the page."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from webui.jobs import JobQueue
    from webui.studio import Studio

CHROMIUM = Path("/usr/bin/chromium")
# Playwright's own browser download cannot work offline; these keep Chromium from calling out.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 30_000
LOGIN = {"username": "artist", "password": "pa55-word"}

BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install -y chromium)"),
]


@contextmanager
def served_with_login(studio: Studio, jobs: JobQueue) -> Iterator[str]:
    """The whole app for `studio` and `jobs` behind the test login, served on a free port; its URL."""
    from webui.api.auth import Credentials
    from webui.server import BackgroundServer, create_app

    credentials = Credentials.from_flags(f"{LOGIN['username']}:{LOGIN['password']}", None, LOGIN["username"])
    with BackgroundServer(create_app(studio, jobs, credentials=credentials)) as url:
        yield url + "/"


@dataclass
class App:
    url: str
    studio: Studio
    jobs: JobQueue


@contextmanager
def serve_app(studio: Studio) -> Iterator[App]:
    """The whole app for `studio` with its own running queue, behind the test login."""
    from webui.jobs import JobQueue

    jobs = JobQueue(studio).start()
    try:
        with served_with_login(studio, jobs) as url:
            yield App(url, studio, jobs)
    finally:
        jobs.stop()


@contextmanager
def offline_page(browser: Browser, url: str) -> Iterator[Page]:
    """A logged-in tab on `url` that must ask nothing beyond this machine (checked as it closes)."""
    outside: list[str] = []
    with logged_in_page(browser, url, outside) as page:
        yield page
    assert outside == []


@contextmanager
def logged_in_page(browser: Browser, url: str, outside_requests: list[str]) -> Iterator[Page]:
    """A fresh browser tab on the page, answering the login prompt as the user would.

    URLs it asks for beyond this machine land in `outside_requests`: the app must work offline.
    """
    context = browser.new_context(viewport={"width": 1280, "height": 900}, http_credentials=LOGIN)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on(
        "request",
        lambda request: (
            None
            if request.url.startswith(("http://127.0.0.1", "data:", "blob:"))
            else outside_requests.append(request.url)
        ),
    )
    page.goto(url)
    page.locator("#txt2img-prompt textarea").wait_for()
    try:
        yield page
    finally:
        context.close()


def open_tab(page: Page, label: str) -> None:
    page.locator("#tabs button[role=tab]", has_text=label).first.click()


def set_number(page: Page, elem_id: str, value: str) -> None:
    """Type into a slider's or number's box; Enter commits it as a user would."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(value)
    box.press("Enter")


def small_job(page: Page, tab: str, prompt: str, steps: str = "2", seed: str | None = "1234") -> None:
    page.locator(f"#{tab}-prompt textarea").fill(prompt)
    set_number(page, f"{tab}-steps", steps)
    set_number(page, f"{tab}-width", "64")
    set_number(page, f"{tab}-height", "64")
    if seed is not None:
        set_number(page, f"{tab}-seed", seed)


def infotext(page: Page, tab: str) -> str:
    return page.locator(f"#{tab}-infotext textarea").input_value()


def generate_and_wait(page: Page, tab: str = "txt2img", click: bool = True) -> str:
    """Click Generate (or not, when the caller pressed Ctrl+Enter) and return the new infotext."""
    before = infotext(page, tab)
    if click:
        page.locator(f"#{tab}-generate").click()
    page.wait_for_function(
        "([tab, before]) => { const box = document.querySelector(`#${tab}-infotext textarea`);"
        " const img = document.querySelector(`#${tab}-gallery img`);"
        " return box && box.value && box.value !== before && img && img.complete && img.naturalWidth > 0; }",
        arg=[tab, before],
    )
    return infotext(page, tab)


def wait_for_text(page: Page, elem_id: str, text: str) -> None:
    # Polled on a timer: the default (animation frames) can stall while the page draws nothing.
    page.wait_for_function(
        "([id, text]) => (document.getElementById(id)?.innerText || '').includes(text)",
        arg=[elem_id, text],
        polling=100,
    )


def error_text(page: Page, elem_id: str) -> str:
    error = page.locator(f"#{elem_id}")
    error.wait_for(state="visible")
    return error.inner_text()

"""Extensions in the real page, driven in headless Chromium: the example extension's tab, script,
CSS and JS; the built-in Caption and Wildcards always-on scripts; a hook that raises; and the
Extensions section of the Settings tab."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from tests.browser_helpers import (
    BROWSER_MARKS,
    LOGIN,
    App,
    error_text,
    generate_and_wait,
    offline_page,
    open_tab,
    serve_app,
    set_number,
    small_job,
    wait_for_text,
)
from tests.extension_helpers import COLORS, install_example_and_raising

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from webui.engine.request import GenerationRequest
    from webui.jobs import Job


pytestmark = BROWSER_MARKS

DEFAULT_GREETING = "Hello from the example extension"


@pytest.fixture(scope="module")
def app(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """The whole app behind a login, with the documented example and a raising extension installed."""
    from webui.settings import Settings
    from webui.studio import Studio

    data_dir = tmp_path_factory.mktemp("extensions-browser")
    settings = Settings.for_data_dir(data_dir, device="cpu", ckpt="tiny", watermark=False)
    settings.ckpt_dir.mkdir(parents=True)
    shutil.copy(tiny_dir / "tiny-sd15.safetensors", settings.ckpt_dir / "tiny.safetensors")
    install_example_and_raising(data_dir / "extensions")

    studio = Studio(settings)
    with serve_app(studio) as app:
        yield app


@pytest.fixture
def page(browser: Browser, app: App) -> Iterator[Page]:
    with offline_page(browser, app.url) as page:
        yield page


def _pick(page: Page, elem_id: str, option: str) -> None:
    box = page.locator(f"#{elem_id} input").first
    box.click()
    box.fill(option)
    page.locator(f"#{elem_id}").get_by_role("option", name=option, exact=True).click()


def _text_box(page: Page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()


def _last_job(app: App) -> Job:
    from webui.jobs import Caller

    return app.jobs.jobs(Caller(LOGIN["username"]))[-1]


def _last_request(app: App) -> GenerationRequest:
    return _last_job(app).request


def _greet(page: Page) -> str:
    before = _text_box(page, "example-greeting")
    page.locator("#example-greet").click()
    page.wait_for_function(
        "before => { const box = document.querySelector("
        "'#example-greeting textarea, #example-greeting input');"
        " return box && box.value && box.value !== before; }",
        arg=before,
    )
    return _text_box(page, "example-greeting")


def test_example_tab_greets_and_brings_its_css_and_js(page: Page) -> None:
    open_tab(page, "Example")
    assert _greet(page) == DEFAULT_GREETING
    # style.css joins the page's CSS: the intro gets its accent border.
    intro = page.locator("#example-intro")
    assert intro.evaluate("el => getComputedStyle(el).borderLeftWidth") == "4px"
    # javascript/example.js is in the page's <head> and ran on its own (Gradio adds it after load).
    assert page.evaluate(
        "() => [...document.head.querySelectorAll('script')]"
        ".some(script => script.textContent.includes('extension example: example.js'))"
    )
    page.wait_for_function("() => document.documentElement.dataset.exampleExtension === 'loaded'")


def test_seed_sweep_from_the_script_menu_makes_two_images(app: App, page: Page) -> None:
    small_job(page, "txt2img", "a swept owl", steps="1", seed="40")
    _pick(page, "txt2img-script", "Seed sweep")
    set_number(page, "txt2img-script-seed-sweep-count", "2")
    generate_and_wait(page)
    page.wait_for_function("() => document.querySelectorAll('#txt2img-gallery img').length >= 2")
    request = _last_request(app)
    assert request.script_name == "Seed sweep" and request.script_args[0] == 2
    result = _last_job(app).result
    assert result is not None and result.seeds == [40, 41]


def test_caption_accordion_adds_a_strip_under_the_image(app: App, page: Page) -> None:
    small_job(page, "txt2img", "a captioned heron", steps="1", seed="7")
    page.locator("#txt2img-alwayson-caption").get_by_text("Caption", exact=True).first.click()
    page.locator("#txt2img-alwayson-caption-enabled input[type=checkbox]").check()
    infotext = generate_and_wait(page)
    assert "Caption: {prompt}" in infotext
    result = _last_job(app).result
    assert result is not None and len(result.paths) == 1
    with Image.open(result.paths[0]) as saved:
        assert saved.width == 64 and saved.height > 64  # the strip under the 64x64 image
    shown = page.locator("#txt2img-gallery img").first
    assert shown.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [64, saved.height]


def test_wildcard_prompt_picks_a_color(page: Page) -> None:
    small_job(page, "txt2img", "a __color__ cat", steps="1", seed="11")
    infotext = generate_and_wait(page)
    first_line = infotext.splitlines()[0]
    assert "__color__" not in infotext
    assert first_line.startswith("a ") and first_line.endswith(" cat")
    assert first_line.removeprefix("a ").removesuffix(" cat") in COLORS


def test_a_raising_step_hook_warns_but_the_job_finishes(app: App, page: Page) -> None:
    from webui.jobs import JobState

    small_job(page, "txt2img", "a resilient fox", steps="2", seed="3")
    generate_and_wait(page)
    job = _last_job(app)
    assert job.state is JobState.DONE and job.result is not None and len(job.result.images) == 1
    warning = error_text(page, "txt2img-error")
    assert "Extension raising" in warning and "on_step failed" in warning
    assert "notice-box" in (page.locator("#txt2img-error").get_attribute("class") or "")  # a note
    assert page.locator("#txt2img-gallery img").first.evaluate("img => img.naturalWidth") == 64
    # The Settings tab's status table lists the problem once refreshed.
    open_tab(page, "Settings")
    page.locator("#extensions-refresh").click()
    wait_for_text(page, "extensions-status", "on_step failed")
    assert "on_step failed" in page.locator("#extensions-status tr[data-extension=raising]").inner_text()


def test_settings_list_extensions_and_a_saved_greeting_applies(app: App, page: Page) -> None:
    open_tab(page, "Settings")
    table = page.locator("#extensions-status")
    table.wait_for()
    statuses = {
        row.get_attribute("data-extension"): row.get_attribute("data-status")
        for row in table.locator("tr[data-extension]").all()
    }
    assert statuses == {"caption": "loaded", "wildcards": "loaded", "example": "loaded", "raising": "loaded"}
    assert "built-in" in table.locator("tr[data-extension=caption]").inner_text()
    choices = page.locator("#extensions-enabled label").all_inner_texts()
    assert sorted(choice.strip() for choice in choices) == ["caption", "example", "raising", "wildcards"]

    box = page.locator(
        "#extension-settings-example-greeting textarea, #extension-settings-example-greeting input"
    )
    box.first.fill("Ahoy from the settings")
    page.locator("#extensions-save-settings").click()
    wait_for_text(page, "extensions-done", "Extension settings saved")
    assert app.studio.extensions.values("example")["greeting"] == "Ahoy from the settings"

    open_tab(page, "Example")
    assert _greet(page) == "Ahoy from the settings"

    # Another page (or a reload) shows the saved value, so saving from it does not undo the change.
    page.reload()
    open_tab(page, "Settings")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#extension-settings-example-greeting textarea,"
        " #extension-settings-example-greeting input')].some(box => box.value === 'Ahoy from the settings')"
    )

    # Put the default back for any test that runs after this one.
    open_tab(page, "Settings")
    box.first.fill(DEFAULT_GREETING)
    page.locator("#extensions-save-settings").click()
    for _ in range(100):
        if app.studio.extensions.values("example")["greeting"] == DEFAULT_GREETING:
            break
        page.wait_for_timeout(100)
    assert app.studio.extensions.values("example")["greeting"] == DEFAULT_GREETING

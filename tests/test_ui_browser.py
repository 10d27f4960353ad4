"""Drive the real page in headless Chromium: generate, show an error, switch checkpoints, recover."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from webui.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
TIMEOUT_MS = 30_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install -y chromium)"),
]


@contextmanager
def _serve(settings: Settings, auth: str | None = None) -> Iterator[str]:
    """Serve the whole app (page and APIs, behind a login when `auth` is given) and yield its URL."""
    from webui.api.auth import Credentials
    from webui.jobs import JobQueue
    from webui.server import BackgroundServer, create_app
    from webui.studio import Studio

    studio = Studio(settings)
    jobs = JobQueue(studio).start()
    app = create_app(studio, jobs, credentials=Credentials.from_flags(auth, None))
    try:
        with BackgroundServer(app) as url:
            yield url + "/"
    finally:
        jobs.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def outside_requests() -> list[str]:
    """URLs the page asked for beyond this machine: the app must work offline."""
    return []


def _note_outside(url: str, found: list[str]) -> None:
    if not url.startswith(("http://127.0.0.1", "data:", "blob:")):
        found.append(url)


LOGIN = {"username": "artist", "password": "pa55-word"}


@pytest.fixture
def page(browser: Browser, outside_requests: list[str]) -> Iterator[Page]:
    """A page whose browser answers the server's login prompt as the user would."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, http_credentials=LOGIN)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("request", lambda request: _note_outside(request.url, outside_requests))
    yield page
    context.close()


def _screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _set_number(page: Page, elem_id: str, value: str) -> None:
    """Type into a slider's or number's box; Enter commits it as a user would."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(value)
    box.press("Enter")


def _generate_and_wait(page: Page) -> str:
    """Click Generate and return the new infotext once the result image has changed."""
    result = page.locator("#result img")
    before = result.get_attribute("src") if result.count() else None
    page.locator("#generate").click()
    page.wait_for_function(
        "before => { const img = document.querySelector('#result img');"
        " return img && img.complete && img.naturalWidth > 0 && img.getAttribute('src') !== before; }",
        arg=before,
    )
    return page.locator("#infotext textarea").input_value()


def test_generate_error_and_recover(
    tmp_path: Path, browser: Browser, page: Page, outside_requests: list[str]
) -> None:
    from webui.settings import Settings
    from webui.tools.tiny_checkpoint import write_tiny_checkpoint

    settings = Settings.for_data_dir(tmp_path, device="cpu", ckpt="tiny")
    write_tiny_checkpoint("sd15", settings.ckpt_dir / "tiny.safetensors")
    import torch
    from safetensors.torch import save_file

    from webui.tools.tiny_checkpoint import build_tiny_state_dict

    # Its header passes the scan but one tensor does not fit: choosing it must show a
    # CheckpointError and keep the page working. (A corrupt header is not even listed.)
    tensors = build_tiny_state_dict("sd15")
    tensors["first_stage_model.decoder.mid.block_1.conv1.weight"] = torch.zeros(32, 32, 1, 1)
    save_file(tensors, str(settings.ckpt_dir / "broken.safetensors"))
    (settings.ckpt_dir / "corrupt.safetensors").write_bytes(b"not a checkpoint")

    with _serve(settings, auth=f"{LOGIN['username']}:{LOGIN['password']}") as url:
        page.goto(url)
        page.locator("#prompt textarea").wait_for()
        page.wait_for_function("() => document.title === 'Stable Diffusion studio'")
        assert not page.locator("#demo-banner").is_visible()

        page.locator("#prompt textarea").fill("a lighthouse at dusk")
        page.locator("#negative-prompt textarea").fill("blurry")
        _set_number(page, "steps", "2")
        _set_number(page, "width", "64")
        _set_number(page, "height", "64")
        _set_number(page, "seed", "1234")

        infotext = _generate_and_wait(page)
        _screenshot(page, "ui-generated")
        assert "Steps: 2" in infotext and "Seed: 1234" in infotext and "Size: 64x64" in infotext
        assert "Negative prompt: blurry" in infotext
        assert len(list(settings.outputs_dir.rglob("*.png"))) == 1

        # Width 100 is inside the slider's range but not a multiple of 8: the engine refuses it.
        _set_number(page, "width", "100")
        page.locator("#generate").click()
        error = page.locator("#error")
        error.wait_for(state="visible")
        assert "multiple of 8" in error.inner_text()
        _screenshot(page, "ui-error")

        # A checkpoint that fails to load: message shown, dropdown back on the loaded model.
        page.locator("#checkpoint input").click()
        page.get_by_role("option", name="broken").click()
        page.wait_for_function("() => (document.querySelector('#error')?.innerText || '').includes('broken')")
        page.wait_for_function("() => document.querySelector('#checkpoint input').value === 'tiny'")
        _screenshot(page, "ui-checkpoint-error")

        # The page keeps working: fix the width, reuse a random seed, generate again.
        _set_number(page, "width", "64")
        page.locator("#seed").get_by_role("button", name="Random").click()
        page.wait_for_function("() => document.querySelector('#seed input').value === '-1'")
        infotext = _generate_and_wait(page)
        assert "Steps: 2" in infotext and "Size: 64x64" in infotext
        assert not error.is_visible()
        seed = infotext.split("Seed: ")[1].split(",")[0]
        page.locator("#seed").get_by_role("button", name="Reuse last").click()
        page.wait_for_function("seed => document.querySelector('#seed input').value === seed", arg=seed)
        _screenshot(page, "ui-recovered")
        assert len(list(settings.outputs_dir.rglob("*.png"))) == 2
        assert outside_requests == []

        # Without the login the browser gets nothing but the refusal.
        stranger = browser.new_context()
        try:
            with pytest.raises(Exception, match="ERR_INVALID_AUTH_CREDENTIALS"):
                stranger.new_page().goto(url)
        finally:
            stranger.close()


def test_demo_banner(tmp_path: Path, page: Page) -> None:
    from webui.settings import Settings

    # No checkpoint at all: the Studio writes its tiny demo model and the page says so.
    with _serve(Settings.for_data_dir(tmp_path, device="cpu")) as url:
        page.goto(url)
        banner = page.locator("#demo-banner")
        banner.wait_for(state="visible")
        assert "noise" in banner.inner_text()
        _screenshot(page, "ui-demo-banner")

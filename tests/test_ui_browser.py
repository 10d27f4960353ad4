"""Drive the real page in headless Chromium, as an artist would: every tab, through the login."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from tests.browser_helpers import (
    BROWSER_MARKS,
    LOGIN,
    error_text,
    generate_and_wait,
    logged_in_page,
    open_tab,
    served_with_login,
    set_number,
    small_job,
    wait_for_text,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from webui.jobs import Job, JobQueue
    from webui.studio import Studio

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = BROWSER_MARKS


class SlowSteps:
    """A step hook: sleeps `delay` seconds per step, and can hold the worker until released."""

    def __init__(self) -> None:
        self.delay = 0.0
        self._open = threading.Event()
        self._open.set()
        self.held = threading.Event()

    def hold(self) -> None:
        self.held.clear()
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def __call__(self, _job: Job, _info: object) -> None:
        if not self._open.is_set():
            self.held.set()
            self._open.wait(60)
        if self.delay:
            time.sleep(self.delay)


@dataclass
class App:
    url: str
    studio: Studio
    jobs: JobQueue
    steps: SlowSteps
    data_dir: Path


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """The whole app behind a login, over two tiny checkpoints, a broken one, a LoRA and an embedding."""
    import torch
    from safetensors.torch import save_file

    from webui.jobs import JobQueue
    from webui.settings import Settings
    from webui.studio import Studio
    from webui.tools.tiny_checkpoint import build_tiny_state_dict, write_tiny_checkpoint
    from webui.tools.tiny_networks import write_tiny_embedding, write_tiny_lora

    data_dir = tmp_path_factory.mktemp("ui")
    settings = Settings.for_data_dir(data_dir, device="cpu", ckpt="tiny", watermark=False)
    write_tiny_checkpoint("sd15", settings.ckpt_dir / "tiny.safetensors")
    write_tiny_checkpoint("sd15", settings.ckpt_dir / "other.safetensors", seed=1)
    # A corrupt file is listed as unusable from the start, never offered.
    (settings.ckpt_dir / "corrupt.safetensors").write_bytes(b"not a checkpoint")
    write_tiny_lora("sd15", data_dir / "models" / "Lora" / "ink.safetensors")
    write_tiny_embedding("sd15", data_dir / "embeddings" / "style-x.safetensors")
    write_tiny_checkpoint("sd15", settings.ckpt_dir / "broken.safetensors", seed=2)

    studio = Studio(settings)
    # Replaced after the scan by a copy with one tensor that does not fit, as a download
    # finishing under a running server would: choosing it must show a CheckpointError and keep
    # the page working. (A scan would refuse it.)
    tensors = build_tiny_state_dict("sd15")
    tensors["first_stage_model.decoder.mid.block_1.conv1.weight"] = torch.zeros(32, 32, 1, 1)
    save_file(tensors, str(settings.ckpt_dir / "broken.safetensors"))
    steps = SlowSteps()
    jobs = JobQueue(studio, step_hooks=[steps]).start()
    try:
        with served_with_login(studio, jobs) as url:
            yield App(url, studio, jobs, steps, data_dir)
    finally:
        steps.release()
        jobs.stop()


@pytest.fixture
def outside_requests() -> list[str]:
    """URLs the page asked for beyond this machine: the app must work offline."""
    return []


@pytest.fixture
def page(browser: Browser, app: App, outside_requests: list[str]) -> Iterator[Page]:
    """A fresh browser tab on the app, whose browser answers the login prompt as the user would."""
    with logged_in_page(browser, app.url, outside_requests) as page:
        yield page
    assert outside_requests == []


def _screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_txt2img_generate_error_and_recover(app: App, page: Page, browser: Browser) -> None:
    assert not page.locator("#demo-banner").is_visible()
    page.locator("#txt2img-negative-prompt textarea").fill("blurry")
    small_job(page, "txt2img", "a lighthouse at dusk")
    infotext = generate_and_wait(page, "txt2img")
    _screenshot(page, "ui-txt2img")
    assert "Steps: 2" in infotext and "Seed: 1234" in infotext and "Size: 64x64" in infotext
    assert "Negative prompt: blurry" in infotext and "Model: tiny" in infotext
    saved = sorted(app.studio.settings.outputs_dir.rglob("*.png"))
    assert saved and Image.open(saved[-1]).info["parameters"] == infotext

    # Width 100 is inside the slider's range but not a multiple of 8: the engine refuses it.
    set_number(page, "txt2img-width", "100")
    page.locator("#txt2img-generate").click()
    assert "multiple of 8" in error_text(page, "txt2img-error")
    _screenshot(page, "ui-txt2img-error")

    # A checkpoint that fails to load: message shown, dropdown back on the loaded model.
    page.locator("#checkpoint input").click()
    page.get_by_role("option", name="broken").click()
    page.wait_for_function(
        "() => (document.querySelector('#header-error')?.innerText || '').includes('broken')"
    )
    page.wait_for_function("() => document.querySelector('#checkpoint input').value === 'tiny'")

    # The page keeps working: fix the width, Ctrl+Enter in the prompt generates a random seed.
    set_number(page, "txt2img-width", "64")
    page.locator("#txt2img-seed").get_by_role("button", name="Random").click()
    page.wait_for_function("() => document.querySelector('#txt2img-seed input').value === '-1'")
    page.locator("#txt2img-prompt textarea").press("Control+Enter")
    infotext = generate_and_wait(page, "txt2img", click=False)
    assert "Size: 64x64" in infotext and not page.locator("#txt2img-error").is_visible()
    seed = infotext.split("Seed: ")[1].split(",")[0]
    page.locator("#txt2img-seed").get_by_role("button", name="Reuse last").click()
    page.wait_for_function("seed => document.querySelector('#txt2img-seed input').value === seed", arg=seed)

    # Swapping the size: 64x128 becomes 128x64.
    set_number(page, "txt2img-height", "128")
    page.locator("#txt2img-swap-size").click()
    page.wait_for_function(
        "() => document.querySelector('#txt2img-width input[type=number]').value === '128'"
    )

    # Without the login the browser gets nothing but the refusal.
    stranger = browser.new_context()
    try:
        with pytest.raises(Exception, match="ERR_INVALID_AUTH_CREDENTIALS"):
            stranger.new_page().goto(app.url)
    finally:
        stranger.close()


def test_live_preview_queue_position_and_interrupt(app: App, page: Page) -> None:
    from webui.engine.request import GenerationRequest
    from webui.jobs import Caller

    # Another user's job holds the worker: this tab waits in the queue and says so.
    app.steps.hold()
    blocker = app.jobs.submit(GenerationRequest(steps=2, width=64, height=64), Caller("someone-else"))
    assert app.steps.held.wait(30)
    small_job(page, "txt2img", "a slow one", steps="8")
    page.locator("#txt2img-generate").click()
    wait_for_text(page, "txt2img-live", "Waiting in the queue: position 1")
    _screenshot(page, "ui-txt2img-queued")

    # Released, it runs slowly: the progress text counts steps and the preview image changes.
    app.steps.delay = 0.4
    app.steps.release()
    blocker.wait(30)
    page.wait_for_function(
        "() => /Step [1-9]\\/8/.test(document.querySelector('#txt2img-live')?.innerText || '')"
    )
    sources = set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(sources) < 3:
        src = page.locator("#txt2img-live img.live-preview").get_attribute("src", timeout=5000)
        if src:
            sources.add(src)
        page.wait_for_timeout(150)
    assert len(sources) >= 3, "the live preview did not change while the job ran"
    _screenshot(page, "ui-txt2img-live-preview")
    bar = page.locator("#txt2img-live .live-progress")
    assert bar.get_attribute("data-steps") == "8"
    generate_and_wait(page, "txt2img", click=False)
    assert not page.locator("#txt2img-live").is_visible()

    # Interrupt stops this tab's own job; the page says so and keeps working.
    app.steps.delay = 0.0
    app.steps.hold()
    page.locator("#txt2img-generate").click()
    assert app.steps.held.wait(30)
    page.locator("#txt2img-interrupt").click()
    app.steps.release()
    assert "Interrupted" in error_text(page, "txt2img-error")
    states = [job.state.value for job in app.jobs.jobs(Caller(LOGIN["username"]))]
    assert states[-1] == "interrupted"
    set_number(page, "txt2img-seed", "5")
    assert "Seed: 5" in generate_and_wait(page, "txt2img")


def test_send_to_img2img_and_inpaint_with_a_painted_mask(app: App, page: Page) -> None:
    small_job(page, "txt2img", "a red barn", seed="77")
    set_number(page, "txt2img-width", "128")
    set_number(page, "txt2img-height", "128")
    generate_and_wait(page, "txt2img")

    # Send to img2img: the image and every parameter arrive; the tab opens.
    page.locator("#txt2img-send-img2img").click()
    page.locator("#img2img-image img").wait_for()
    assert page.locator("#img2img-prompt textarea").input_value() == "a red barn"
    assert page.locator("#img2img-seed input").input_value() == "77"
    infotext = generate_and_wait(page, "img2img")
    assert "Denoising strength: 0.75" in infotext and "Size: 128x128" in infotext
    _screenshot(page, "ui-img2img")

    # Send to inpaint and paint a stroke across the middle of the picture.
    open_tab(page, "txt2img")
    page.locator("#txt2img-send-inpaint").click()
    canvas = page.locator("#inpaint-editor canvas").first
    canvas.wait_for()
    page.wait_for_timeout(500)  # the editor lays out the image before it takes strokes
    page.locator("#inpaint-editor button[aria-label='Brush']").first.click()
    box = canvas.bounding_box()
    assert box is not None
    middle_y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.3, middle_y)
    page.mouse.down()
    for fraction in (0.4, 0.5, 0.6, 0.7):
        page.mouse.move(box["x"] + box["width"] * fraction, middle_y, steps=4)
    page.mouse.up()
    _screenshot(page, "ui-inpaint-painted")
    infotext = generate_and_wait(page, "inpaint")
    assert "Mask blur: 4" in infotext and "Denoising strength" in infotext
    _screenshot(page, "ui-inpaint")

    # The unmasked corners are the original's pixels: only the painted band was redrawn.
    original = Image.open(sorted((app.studio.settings.outputs_dir / "txt2img-images").rglob("*.png"))[-1])
    result = Image.open(sorted((app.studio.settings.outputs_dir / "img2img-images").rglob("*.png"))[-1])
    assert result.size == original.size == (128, 128)
    # The stroke covers the middle band; mask blur (4 px) reaches a little beyond it.
    for band in ((0, 0, 128, 16), (0, 112, 128, 128)):
        assert result.convert("RGB").crop(band).tobytes() == original.convert("RGB").crop(band).tobytes()
    assert result.convert("RGB").tobytes() != original.convert("RGB").tobytes()

    # Clearing the mask and generating asks for a mask instead of failing.
    page.locator("#inpaint-clear-mask").click()
    page.wait_for_timeout(1500)  # the editor takes the cleared value back from the server
    page.locator("#inpaint-generate").click()
    assert "paint over" in error_text(page, "inpaint-error")


def test_models_tab_switch_lists_merge_and_unusable_files(
    app: App, page: Page, caplog: pytest.LogCaptureFixture
) -> None:
    open_tab(page, "Models")
    table = page.locator("#models-table")
    wait_for_text(page, "models-table", "tiny ✓")
    assert "other" in table.inner_text() and "SD 1.x" in table.inner_text()

    page.locator("#models-choice input").click()
    page.get_by_role("option", name="other").click()
    page.locator("#models-switch").click()
    wait_for_text(page, "models-table", "other ✓")
    page.wait_for_function("() => document.querySelector('#checkpoint input').value === 'other'")
    assert "loaded other" in page.locator("#models-status").inner_text()
    _screenshot(page, "ui-models")

    # A LoRA click puts its tag into the txt2img prompt; an embedding goes into img2img's.
    page.locator("#models-loras").get_by_text("ink").click()
    page.locator("#models-insert-into").get_by_text("img2img").click()
    page.locator("#models-embeddings").get_by_text("style-x").click()
    page.wait_for_timeout(500)
    open_tab(page, "img2img")
    page.wait_for_function(
        "() => document.querySelector('#img2img-prompt textarea')?.value.includes('style-x')"
    )
    open_tab(page, "txt2img")
    assert "<lora:ink:1>" in page.locator("#txt2img-prompt textarea").input_value()
    open_tab(page, "Models")

    # A broken checkpoint gives a message, not a dead page.
    page.locator("#models-choice input").click()
    page.get_by_role("option", name="broken").click()
    page.locator("#models-switch").click()
    assert "broken" in error_text(page, "models-error")

    # The merger writes a new checkpoint that the lists show at once.
    page.locator("#models-merger").get_by_text("Merge checkpoints").click()
    for elem_id, name in (("merge-primary", "tiny"), ("merge-secondary", "other")):
        box = page.locator(f"#{elem_id} input")
        box.click()
        box.fill(name)
        page.locator(f"#{elem_id}").get_by_role("option", name=name, exact=True).click()
    page.locator("#merge-name textarea, #merge-name input").first.fill("half-half")
    page.locator("#merge-run").click()
    page.locator("#merge-result").get_by_text("half-half").wait_for(timeout=60_000)
    wait_for_text(page, "models-table", "half-half")
    assert (app.studio.settings.ckpt_dir / "half-half.safetensors").is_file()

    page.locator("#models-choice input").click()
    page.get_by_role("option", name="tiny", exact=True).click()
    page.locator("#models-switch").click()
    wait_for_text(page, "models-table", "tiny ✓")

    # Files that cannot be used are listed with the reason; new ones appear on a refresh.
    wait_for_text(page, "models-unusable", "corrupt.safetensors")
    assert "truncated or corrupt" in page.locator("#models-unusable").inner_text()
    good = (app.studio.settings.ckpt_dir / "tiny.safetensors").read_bytes()
    (app.studio.settings.ckpt_dir / "noise.safetensors").write_bytes(bytes(range(256)) * 64)
    (app.studio.settings.ckpt_dir / "half.safetensors").write_bytes(good[: len(good) // 2])
    page.locator("#models-refresh").click()
    wait_for_text(page, "models-unusable", "half.safetensors")
    unusable = page.locator("#models-unusable").inner_text()
    assert "noise.safetensors" in unusable and "broken.safetensors" in unusable and "do not fit" in unusable
    assert "noise" not in page.locator("#models-table").inner_text()
    logged = [r.getMessage() for r in caplog.records if r.name == "webui.model_manager.registry"]
    assert any("half.safetensors cannot be used: not a readable" in message for message in logged)
    _screenshot(page, "ui-models-unusable")


def test_pnginfo_round_trip_into_txt2img(app: App, page: Page, tmp_path: Path) -> None:
    from webui.engine.request import GenerationRequest
    from webui.jobs import Caller

    # An image made with the *other* checkpoint: pasting its parameters switches the model too.
    job = app.jobs.submit(
        GenerationRequest(
            prompt="a quiet harbour",
            negative_prompt="text",
            steps=3,
            width=64,
            height=96,
            seed=4242,
            cfg_scale=5,
        ),
        Caller(LOGIN["username"]),
        checkpoint="other",
    )
    job.wait(60)
    assert job.result is not None
    made = job.result.paths[0]

    open_tab(page, "PNG Info")
    page.locator("#pnginfo-image input[type=file]").set_input_files(str(made))
    page.wait_for_function(
        "() => document.querySelector('#pnginfo-infotext textarea').value.includes('Seed: 4242')"
    )
    assert "a quiet harbour" in page.locator("#pnginfo-table").inner_text()
    _screenshot(page, "ui-pnginfo")

    page.locator("#pnginfo-send-txt2img").click()
    page.wait_for_function(
        "() => document.querySelector('#txt2img-prompt textarea').value === 'a quiet harbour'"
    )
    page.wait_for_function("() => document.querySelector('#checkpoint input').value === 'other'")
    infotext = generate_and_wait(page, "txt2img")
    assert infotext == job.result.infotexts[0], "the pasted parameters did not reproduce the image"
    produced = sorted((app.studio.settings.outputs_dir / "txt2img-images").rglob("*.png"))[-1]
    assert Image.open(produced).tobytes() == Image.open(made).tobytes()
    app.studio.models.select_checkpoint("tiny")

    # A picture without parameters is said to have none.
    plain = tmp_path / "plain.png"
    Image.new("RGB", (32, 32), "white").save(plain)
    page.reload()
    page.locator("#txt2img-prompt textarea").wait_for()
    open_tab(page, "PNG Info")
    page.locator("#pnginfo-image input[type=file]").set_input_files(str(plain))
    page.locator("#pnginfo-table").get_by_text("no generation parameters").wait_for()


def test_history_settings_and_screenshots(app: App, page: Page) -> None:
    small_job(page, "txt2img", "for the history")
    generate_and_wait(page, "txt2img")
    open_tab(page, "History")
    page.wait_for_function(
        "() => document.querySelector('#history-infotext textarea')?.value.startsWith('for the history')"
    )
    assert page.locator("#history-gallery img").count() >= 1
    _screenshot(page, "ui-history")

    for label in ("img2img", "Inpaint"):
        open_tab(page, label)
        page.wait_for_timeout(300)
        _screenshot(page, f"ui-{label.lower()}-tab")

    # Settings: a file name pattern and preview period apply at once.
    open_tab(page, "Settings")
    page.locator("#settings-pattern textarea, #settings-pattern input").first.fill("[seed]-[prompt_words]")
    set_number(page, "settings-preview-period", "2")
    page.locator("#settings-apply").click()
    page.locator("#settings-saved").get_by_text("applied").wait_for()
    _screenshot(page, "ui-settings")
    assert app.studio.settings.preview_period == 2
    page.locator("#settings-pattern textarea, #settings-pattern input").first.fill("[nope]")
    page.locator("#settings-apply").click()
    assert "[nope]" in error_text(page, "settings-error")
    assert app.studio.settings.filename_pattern == "[seed]-[prompt_words]"

    open_tab(page, "txt2img")
    small_job(page, "txt2img", "named after me", seed="99")
    generate_and_wait(page, "txt2img")
    assert any(
        path.name.endswith("-99-named after me.png")
        for path in app.studio.settings.outputs_dir.rglob("*.png")
    )
    app.studio.apply_settings(replace(app.studio.settings, filename_pattern="[seed]", preview_period=1))


def test_a_fresh_install_draws_what_the_demo_banner_suggests(tmp_path: Path, browser: Browser) -> None:
    from webui.jobs import JobQueue
    from webui.server import BackgroundServer, create_app
    from webui.settings import Settings
    from webui.studio import Studio
    from webui.training.scoring import read_scene

    # No checkpoint at all: the Studio starts on the shipped demo model and the page says so.
    studio = Studio(Settings.for_data_dir(tmp_path, device="cpu", watermark=False))
    jobs = JobQueue(studio).start()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        with BackgroundServer(create_app(studio, jobs)) as url:
            page = context.new_page()
            page.goto(url)
            banner = page.locator("#demo-banner")
            banner.wait_for(state="visible")
            assert "red circle" in banner.inner_text()
            assert page.locator("#txt2img-width input[type=number]").input_value() == "128"
            page.locator("#txt2img-prompt textarea").fill("a red circle at the top left on a blue background")
            set_number(page, "txt2img-seed", "1")
            generate_and_wait(page)
            _screenshot(page, "ui-demo-txt2img")
            saved = sorted((tmp_path / "outputs").rglob("*.png"))
            reading = read_scene(Image.open(saved[-1]))
            assert (reading.colour, reading.background) == ("red", "blue"), reading
    finally:
        context.close()
        jobs.stop()


def test_train_tab_trains_a_lora_that_appears_in_the_lists_and_refuses_a_bad_folder(
    app: App, page: Page
) -> None:
    open_tab(page, "Train")
    page.locator("#train-name textarea, #train-name input").first.fill("ui-lora")
    page.locator("#train-dataset textarea, #train-dataset input").first.fill(str(app.data_dir / "nowhere"))
    page.locator("#train-start").click()
    wait_for_text(page, "train-error", "does not exist")
    page.locator("#train-dataset textarea, #train-dataset input").first.fill("shapes")
    for field, value in (("steps", "3"), ("batch-size", "1"), ("resolution", "64"), ("rank", "2")):
        set_number(page, f"train-{field}", value)
    page.locator("#train-sample-prompt textarea").fill("a red circle")
    page.locator("#train-start").click()
    wait_for_text(page, "train-status", "Done")
    assert "<lora:ui-lora:1>" in page.locator("#train-status").inner_text()
    assert not page.locator("#train-error").is_visible()
    page.locator("#train-samples img").wait_for()
    _screenshot(page, "ui-train")
    open_tab(page, "Models")
    page.locator("#models-loras", has_text="ui-lora").wait_for()

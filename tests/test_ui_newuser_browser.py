"""The page as a new user finds it (issue 22): errors where the eye is, files that are not images,
the inpaint canvas's uploads, the merger's messages, the header's model line, labels and tooltips.
Each test shares one page load across several checks; tiny checkpoints, 64x64, 2 steps."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image, PngImagePlugin

from tests.browser_helpers import (
    BROWSER_MARKS,
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

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page


ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
VIEWPORT_HEIGHT = 900

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """The app over a tiny SD1.5 checkpoint, a byte-for-byte copy of it ("twin") and a tiny SDXL."""
    from webui.settings import Settings
    from webui.studio import Studio
    from webui.tools.tiny_checkpoint import write_tiny_checkpoint

    data_dir = tmp_path_factory.mktemp("newuser")
    settings = Settings.for_data_dir(data_dir, device="cpu", ckpt="tiny", watermark=False)
    write_tiny_checkpoint("sd15", settings.ckpt_dir / "tiny.safetensors")
    shutil.copy(settings.ckpt_dir / "tiny.safetensors", settings.ckpt_dir / "twin.safetensors")
    write_tiny_checkpoint("sdxl", settings.ckpt_dir / "xl.safetensors")
    studio = Studio(settings)
    studio.models.registry.hash_all()  # as the background hashing at start does
    with serve_app(studio) as app:
        yield app


@pytest.fixture
def page(browser: Browser, app: App) -> Iterator[Page]:
    with offline_page(browser, app.url) as page:
        yield page


def _screenshot(page: Page, name: str) -> None:
    """What a 1280x900 window shows (docs/ui-<tab>.png are copies of these)."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def _box(page: Page, selector: str) -> dict[str, float]:
    box = page.locator(selector).first.bounding_box()
    assert box is not None, f"{selector} is not shown"
    return box


def _in_view(page: Page, selector: str) -> None:
    box = _box(page, selector)
    assert box["y"] >= 0 and box["y"] + box["height"] <= VIEWPORT_HEIGHT, f"{selector} is off-screen: {box}"


def _gallery_images(page: Page, tab: str) -> int:
    return page.locator(f"#{tab}-gallery img").count()


def test_errors_where_the_eye_is_results_labels_and_header(app: App, page: Page) -> None:
    # The title fits at 1280 px and at 1024 px.
    for width in (1280, 1024):
        page.set_viewport_size({"width": width, "height": VIEWPORT_HEIGHT})
        fits = page.evaluate(
            "() => { const h = document.querySelector('#title h1');"
            " return h.scrollWidth <= h.clientWidth + 1 && h.getBoundingClientRect().width > 0; }"
        )
        assert fits, f"the title is cut at {width} px"
    page.set_viewport_size({"width": 1280, "height": VIEWPORT_HEIGHT})

    # Small buttons say what they are in text any font has, and explain themselves on hover.
    for elem_id in (
        "refresh-checkpoints",
        "txt2img-swap-size",
        "txt2img-style-save",
        "txt2img-styles-refresh",
    ):
        button = page.locator(f"#{elem_id}")
        assert button.inner_text().strip().isascii(), f"#{elem_id} needs an emoji font"
        page.wait_for_function(f"() => document.getElementById('{elem_id}').title.length > 5")
    random_seed = page.locator("#txt2img-seed").get_by_role("button", name="Random")
    assert random_seed.get_attribute("title")

    # The header names the current model and where it is.
    assert "tiny" in page.locator("#model-status").inner_text()

    # A number typed out of a slider's range is not changed in silence.
    set_number(page, "txt2img-steps", "0")
    wait_for_text(page, "txt2img-steps", "0 is outside 1 to 150: 1 is used")
    set_number(page, "txt2img-steps", "2")
    page.locator("#txt2img-steps .range-note").wait_for(state="detached")

    # Send-to with nothing to send says so.
    page.locator("#txt2img-send-img2img").click()
    assert "no result to send" in error_text(page, "txt2img-error")

    # A single result is shown whole, its download and full-screen buttons at once.
    small_job(page, "txt2img", "a lighthouse")
    generate_and_wait(page)
    page.locator("#txt2img-error").wait_for(state="hidden")
    # The job loaded the model: the header says so without a reload.
    page.wait_for_function("() => !document.getElementById('model-status').innerText.includes('on disk')")
    gallery, image = _box(page, "#txt2img-gallery"), _box(page, "#txt2img-gallery img")
    assert image["y"] + image["height"] <= gallery["y"] + gallery["height"] + 1, (image, gallery)
    assert image["x"] + image["width"] <= gallery["x"] + gallery["width"] + 1, (image, gallery)
    assert page.locator("#txt2img-gallery button[aria-label*='ownload' i]").first.is_visible()
    assert page.locator("#txt2img-gallery button[aria-label*='ull' i]").first.is_visible()
    _screenshot(page, "ui-txt2img")

    # A size that is not a multiple of 8: the error is on screen, above the results, and the
    # previous result is gone (it would read as this click's outcome).
    set_number(page, "txt2img-width", "100")
    page.locator("#txt2img-generate").click()
    assert "multiple of 8" in error_text(page, "txt2img-error")
    _in_view(page, "#txt2img-error")
    assert _box(page, "#txt2img-error")["y"] < _box(page, "#txt2img-gallery")["y"]
    page.wait_for_function("() => !document.querySelector('#txt2img-gallery img')")
    assert page.locator("#txt2img-infotext textarea").input_value() == ""
    _screenshot(page, "ui-txt2img-error")

    # Switching to a model already in memory: the header says where the current one is now and
    # what this switch did, not an older event of another model.
    app.studio.models.select_checkpoint("twin")
    app.studio.models.select_checkpoint("tiny")  # both are in RAM or on the device now
    page.locator("#checkpoint input").click()
    page.get_by_role("option", name="twin", exact=False).first.click()
    wait_for_text(page, "model-status", "twin")
    status = page.locator("#model-status").inner_text()
    assert "from disk" not in status and "twin" in status, status


def test_files_that_are_not_images_are_named_in_their_tab(app: App, page: Page, tmp_path: Path) -> None:
    noise, text = tmp_path / "x.jpg", tmp_path / "x.png"
    noise.write_bytes(bytes(range(256)) * 16)
    text.write_text("not a picture at all\n")
    made = tmp_path / "made.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a harbour\nSteps: 2, Sampler: Euler a, Seed: 5, Size: 64x64, Model: tiny")
    Image.new("RGB", (64, 64), "gray").save(made, pnginfo=info)

    # PNG Info: the message replaces the previous image's parameters, so none are sent on.
    open_tab(page, "PNG Info")
    upload = page.locator("#pnginfo-image input[type=file]")
    upload.set_input_files(str(made))
    page.wait_for_function(
        "() => document.querySelector('#pnginfo-infotext textarea').value.includes('Seed: 5')"
    )
    upload.set_input_files(str(noise))
    wait_for_text(page, "pnginfo-table", "x.jpg is not a readable image")
    assert page.locator("#pnginfo-infotext textarea").input_value() == ""
    assert "preprocess" not in page.content()
    page.locator("#pnginfo-send-txt2img").click()
    assert "generation parameters" in error_text(page, "header-error")

    # img2img: said in the tab at the upload, and again on Generate, without Gradio's raw error.
    open_tab(page, "img2img")
    page.locator("#img2img-image input[type=file]").set_input_files(str(text))
    wait_for_text(page, "img2img-error", "x.png is not a readable image")
    small_job(page, "img2img", "a harbour")
    page.locator("#img2img-generate").click()
    page.wait_for_timeout(500)
    wait_for_text(page, "img2img-error", "x.png is not a readable image")

    # Extras.
    open_tab(page, "Extras")
    page.locator("#extras-image input[type=file]").set_input_files(str(noise))
    page.locator("#extras-run").click()
    wait_for_text(page, "extras-error", "x.jpg is not a readable image")

    # Inpaint: a picture with an uploaded mask that is not an image, then an all-black one.
    open_tab(page, "Inpaint")
    page.locator("#inpaint-editor input[type=file]").first.set_input_files(str(made))
    page.locator("#inpaint-editor canvas").first.wait_for()
    page.get_by_text("Upload a mask instead").click()
    mask = page.locator("#inpaint-mask input[type=file]")
    mask.set_input_files(str(text))
    small_job(page, "inpaint", "a harbour")
    page.locator("#inpaint-generate").click()
    wait_for_text(page, "inpaint-error", "x.png is not a readable image")
    black = tmp_path / "black.png"
    Image.new("L", (64, 64), 0).save(black)
    page.locator("#inpaint-mask button[aria-label='Remove Image']").click()
    mask.set_input_files(str(black))
    page.locator("#inpaint-mask img").wait_for()
    page.locator("#inpaint-generate").click()
    wait_for_text(page, "inpaint-error", "uploaded mask is empty")
    assert "preprocess" not in page.content()


def test_inpaint_canvas_uploads_once_and_only_from_inpaint(app: App, page: Page) -> None:
    uploads: list[str] = []
    page.on("request", lambda request: uploads.append(request.url) if "/upload" in request.url else None)
    small_job(page, "txt2img", "a red barn")
    generate_and_wait(page)
    page.locator("#txt2img-send-inpaint").click()
    page.locator("#inpaint-editor canvas").first.wait_for()

    # Generating on another tab uploads nothing of the canvas. (Showing a new picture and leaving
    # the tab may make the editor report an upload, sized once: let that settle first.)
    open_tab(page, "txt2img")
    settled = -1
    while settled != len(uploads):
        settled = len(uploads)
        page.wait_for_timeout(1500)
    uploads.clear()
    set_number(page, "txt2img-seed", "7")
    generate_and_wait(page)
    page.wait_for_timeout(500)
    assert uploads == [], f"{len(uploads)} uploads for a txt2img Generate"

    # Inpaint's own Generate uploads the canvas once (its picture and composite, no layer loops).
    open_tab(page, "Inpaint")
    page.locator("#inpaint-editor canvas").first.wait_for()
    uploads.clear()
    page.locator("#inpaint-generate").click()
    assert "paint over" in error_text(page, "inpaint-error")
    page.wait_for_timeout(500)
    assert 0 < len(uploads) <= 3, f"{len(uploads)} uploads for one inpaint Generate"


def test_merger_messages_hash_listing_and_pnginfo_twin(app: App, page: Page, tmp_path: Path) -> None:
    open_tab(page, "Models")
    page.locator("#models-merger").get_by_text("Merge checkpoints").click()

    def choose(elem_id: str, name: str) -> None:
        page.locator(f"#{elem_id} input").click()
        page.get_by_role("option", name=name, exact=False).first.click()

    # SD1 with SDXL: the real reason, not "not a readable .safetensors file".
    choose("merge-primary", "tiny")
    choose("merge-secondary", "xl")
    page.locator("#merge-name input, #merge-name textarea").first.fill("mixed")
    page.locator("#merge-run").click()
    wait_for_text(page, "merge-result", "Merge failed")
    failed = page.locator("#merge-result").inner_text()
    assert "not a readable" not in failed and "truncated" not in failed, failed

    # A good merge afterwards: not in the error style, hashed, in the header's list at once.
    choose("merge-secondary", "twin")
    page.locator("#merge-run").click()
    wait_for_text(page, "merge-result", "Wrote")
    assert "error-box" not in (page.locator("#merge-result").get_attribute("class") or "")
    assert "hash " in page.locator("#merge-result").inner_text()
    wait_for_text(page, "models-table", "mixed")
    table = page.locator("#models-table").inner_text()
    assert "not hashed yet" not in table, table
    page.locator("#checkpoint input").click()
    page.get_by_role("option", name="mixed", exact=False).first.wait_for()
    page.keyboard.press("Escape")
    _screenshot(page, "ui-models")

    # PNG Info: of two files with the same hash, the one the infotext names.
    digest = app.studio.models.facts.cached_sha256(app.studio.models.find_checkpoint("twin").path)
    assert digest == app.studio.models.facts.cached_sha256(app.studio.models.find_checkpoint("tiny").path)
    made = tmp_path / "twin.png"
    info = PngImagePlugin.PngInfo()
    info.add_text(
        "parameters",
        "a harbour\nSteps: 2, Sampler: Euler a, Seed: 5, Size: 64x64, "
        f"Model hash: {digest[:10]}, Model: twin",
    )
    Image.new("RGB", (64, 64), "gray").save(made, pnginfo=info)
    app.studio.models.select_checkpoint("tiny")
    open_tab(page, "PNG Info")
    page.locator("#pnginfo-image input[type=file]").set_input_files(str(made))
    page.wait_for_function(
        "() => document.querySelector('#pnginfo-infotext textarea').value.includes('twin')"
    )
    page.locator("#pnginfo-send-txt2img").click()
    page.wait_for_function("() => document.querySelector('#checkpoint input').value.startsWith('twin')")
    assert app.studio.models.current_checkpoint() == "twin"
    app.studio.models.select_checkpoint("tiny")


def test_screenshots_of_every_tab(app: App, page: Page) -> None:
    """docs/ui-<tab>.png: what each tab looks like at 1280x900 (looked at, not compared)."""
    small_job(page, "txt2img", "a lighthouse at dusk")
    generate_and_wait(page)
    page.locator("#txt2img-send-inpaint").click()
    page.locator("#inpaint-editor canvas").first.wait_for()
    page.evaluate("() => window.scrollTo(0, 0)")
    for label in (
        "txt2img",
        "img2img",
        "Inpaint",
        "Extras",
        "Models",
        "PNG Info",
        "History",
        "Train",
        "Settings",
    ):
        open_tab(page, label)
        page.wait_for_timeout(400)
        _screenshot(page, f"ui-tab-{label.lower().replace(' ', '')}")

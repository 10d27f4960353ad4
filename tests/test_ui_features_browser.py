"""The A1111 extras an artist reaches for, driven in headless Chromium: prompt styles, hires fix,
variation seeds and tiling, pasting them back from an infotext, and the Extras upscaler tab."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image, PngImagePlugin

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

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

    from webui.engine.request import GenerationRequest


pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """The whole app behind a login over one tiny checkpoint."""
    from webui.settings import Settings
    from webui.studio import Studio
    from webui.tools.tiny_checkpoint import write_tiny_checkpoint

    data_dir = tmp_path_factory.mktemp("ui-features")
    settings = Settings.for_data_dir(data_dir, device="cpu", ckpt="tiny", watermark=False)
    write_tiny_checkpoint("sd15", settings.ckpt_dir / "tiny.safetensors")
    studio = Studio(settings)
    with serve_app(studio) as app:
        yield app


@pytest.fixture
def page(browser: Browser, app: App) -> Iterator[Page]:
    with offline_page(browser, app.url) as page:
        yield page


def _number(page: Page, elem_id: str) -> float:
    return float(page.locator(f"#{elem_id} input[type=number]").input_value())


def _text_box(page: Page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()


def _checkbox(page: Page, elem_id: str) -> Locator:
    return page.locator(f"#{elem_id} input[type=checkbox]")


def _pick(page: Page, elem_id: str, option: str) -> None:
    box = page.locator(f"#{elem_id} input").first
    box.click()
    box.fill(option)
    page.locator(f"#{elem_id}").get_by_role("option", name=option, exact=True).click()


def _last_request(app: App) -> GenerationRequest:
    from webui.jobs import Caller

    return app.jobs.jobs(Caller(LOGIN["username"]))[-1].request


def _newest(app: App, folder: str) -> Path:
    return sorted((app.studio.settings.outputs_dir / folder).rglob("*.png"))[-1]


def _png_with(path: Path, infotext: str, size: tuple[int, int] = (64, 64)) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", infotext)
    Image.new("RGB", size, (200, 120, 40)).save(path, pnginfo=info)
    return path


def test_styles_save_list_and_apply(app: App, page: Page) -> None:
    prompt, negative = (
        page.locator("#txt2img-prompt textarea"),
        page.locator("#txt2img-negative-prompt textarea"),
    )
    prompt.fill("{prompt}, oil painting")
    negative.fill("lowres")
    page.locator("#txt2img-style-save").click()
    assert "needs a name" in error_text(page, "txt2img-error")

    page.locator("#txt2img-style-name textarea, #txt2img-style-name input").first.fill("oil")
    page.locator("#txt2img-style-save").click()
    wait_for_text(page, "txt2img-error", "Style 'oil' was saved")  # said, not silent
    assert app.studio.styles.find("oil").prompt == "{prompt}, oil painting"
    assert app.studio.styles.find("oil").negative_prompt == "lowres"

    # Saved in txt2img, listed in the other tabs too.
    open_tab(page, "img2img")
    page.locator("#img2img-styles input").first.click()
    page.locator("#img2img-styles").get_by_role("option", name="oil", exact=True).wait_for()
    page.keyboard.press("Escape")
    open_tab(page, "txt2img")

    # Applying writes the styled prompts into the boxes and clears the selection.
    small_job(page, "txt2img", "a cat", seed="3")
    negative.fill("")
    _pick(page, "txt2img-styles", "oil")
    page.locator("#txt2img-styles-apply").click()
    page.wait_for_function(
        "() => document.querySelector('#txt2img-prompt textarea').value === 'a cat, oil painting'"
    )
    assert negative.input_value() == "lowres"
    assert page.locator("#txt2img-styles .token").count() == 0
    infotext = generate_and_wait(page)
    assert infotext.startswith("a cat, oil painting\nNegative prompt: lowres\n")
    assert _last_request(app).styles == []

    # A style left selected travels in the request; the studio applies it, the infotext shows it.
    prompt.fill("a dog")
    negative.fill("")
    _pick(page, "txt2img-styles", "oil")
    infotext = generate_and_wait(page)
    assert _last_request(app).styles == ["oil"] and _last_request(app).prompt == "a dog"
    assert infotext.startswith("a dog, oil painting\nNegative prompt: lowres\n")


def test_hires_fix_size_label_and_request(app: App, page: Page) -> None:
    small_job(page, "txt2img", "a tower", seed="11")
    _checkbox(page, "txt2img-enable-hr").check()
    wait_for_text(page, "txt2img-hr-size", "from 64x64 to 128x128")
    set_number(page, "txt2img-hr-resize-x", "96")
    wait_for_text(page, "txt2img-hr-size", "from 64x64 to 96x96")
    set_number(page, "txt2img-hr-resize-x", "0")
    set_number(page, "txt2img-hr-scale", "3")
    wait_for_text(page, "txt2img-hr-size", "from 64x64 to 192x192")
    set_number(page, "txt2img-hr-scale", "2")
    wait_for_text(page, "txt2img-hr-size", "from 64x64 to 128x128")
    set_number(page, "txt2img-hr-steps", "2")
    infotext = generate_and_wait(page)

    request = _last_request(app)
    assert request.enable_hr and request.hr_scale == 2 and request.hr_size == (128, 128)
    assert (request.hr_upscaler, request.hr_second_pass_steps, request.denoising_strength) == (
        "Latent",
        2,
        0.7,
    )
    assert (request.hr_sampler_name, request.hr_scheduler, request.hr_prompt) == ("", "", "")
    # These two need the engine's hires pass.
    assert "Hires upscale: 2" in infotext
    assert Image.open(_newest(app, "txt2img-images")).size == (128, 128)


def test_variation_seed_and_tiling_reach_the_request(app: App, page: Page) -> None:
    small_job(page, "txt2img", "a field", seed="21")
    _checkbox(page, "txt2img-seed-extras").check()
    set_number(page, "txt2img-subseed", "99")
    set_number(page, "txt2img-subseed-strength", "0.5")
    set_number(page, "txt2img-seed-resize-w", "128")
    set_number(page, "txt2img-seed-resize-h", "96")
    _checkbox(page, "txt2img-tiling").check()
    infotext = generate_and_wait(page)
    request = _last_request(app)
    assert (request.subseed, request.subseed_strength) == (99, 0.5)
    assert (request.seed_resize_from_w, request.seed_resize_from_h) == (128, 96)
    assert request.tiling

    # Unticked, the hidden variation settings stay out of the request; tiling is its own switch.
    _checkbox(page, "txt2img-seed-extras").uncheck()
    _checkbox(page, "txt2img-tiling").uncheck()
    set_number(page, "txt2img-seed", "22")
    generate_and_wait(page)
    request = _last_request(app)
    assert (request.subseed, request.subseed_strength, request.seed_resize_from_w) == (-1, 0.0, 0)
    assert not request.tiling

    # These need the engine's variation seeds.
    assert "Variation seed: 99" in infotext and "Variation seed strength: 0.5" in infotext
    assert "Seed resize from: 128x96" in infotext


def test_pasted_infotext_fills_hires_and_variation(app: App, page: Page, tmp_path: Path) -> None:
    pasted = _png_with(
        tmp_path / "hires.png",
        "a harbour at night\nNegative prompt: text\n"
        "Steps: 3, Sampler: Euler, Schedule type: Karras, CFG scale: 5, Seed: 42, Size: 64x64, Model: tiny, "
        "Variation seed: 7, Variation seed strength: 0.25, Seed resize from: 128x96, "
        "Denoising strength: 0.45, "
        "Hires upscale: 1.5, Hires steps: 4, Hires upscaler: Latent (bicubic), Hires sampler: DPM++ 2M, "
        "Hires schedule type: Karras, Hires prompt: sharper, Tiling: True",
    )
    open_tab(page, "PNG Info")
    page.locator("#pnginfo-image input[type=file]").set_input_files(str(pasted))
    wait_for_text(page, "pnginfo-table", "sharper")
    page.locator("#pnginfo-send-txt2img").click()
    page.wait_for_function(
        "() => document.querySelector('#txt2img-prompt textarea').value === 'a harbour at night'"
    )
    wait_for_text(page, "txt2img-hr-size", "from 64x64 to 96x96")
    assert _checkbox(page, "txt2img-enable-hr").is_checked()
    assert (_number(page, "txt2img-hr-scale"), _number(page, "txt2img-hr-steps")) == (1.5, 4)
    assert _number(page, "txt2img-hr-denoising") == 0.45
    assert _text_box(page, "txt2img-hr-upscaler") == "Latent (bicubic)"
    assert _text_box(page, "txt2img-hr-sampler") == "DPM++ 2M"
    assert _text_box(page, "txt2img-hr-scheduler") == "Karras"
    assert _text_box(page, "txt2img-hr-prompt") == "sharper"
    assert _checkbox(page, "txt2img-seed-extras").is_checked()
    assert (_number(page, "txt2img-subseed"), _number(page, "txt2img-subseed-strength")) == (7, 0.25)
    assert (_number(page, "txt2img-seed-resize-w"), _number(page, "txt2img-seed-resize-h")) == (128, 96)
    assert _checkbox(page, "txt2img-tiling").is_checked()

    # Generating from the pasted controls asks for what the infotext describes.
    generate_and_wait(page)
    request = _last_request(app)
    assert (request.prompt, request.negative_prompt, request.seed, request.steps) == (
        "a harbour at night",
        "text",
        42,
        3,
    )
    assert (request.sampler_name, request.scheduler, request.cfg_scale) == ("Euler", "Karras", 5)
    assert request.enable_hr and (request.hr_scale, request.hr_second_pass_steps) == (1.5, 4)
    assert (request.hr_upscaler, request.hr_sampler_name, request.hr_scheduler) == (
        "Latent (bicubic)",
        "DPM++ 2M",
        "Karras",
    )
    assert (request.hr_prompt, request.denoising_strength) == ("sharper", 0.45)
    assert (request.subseed, request.subseed_strength) == (7, 0.25)
    assert (request.seed_resize_from_w, request.seed_resize_from_h, request.tiling) == (128, 96, True)

    # An infotext without those keys puts them back to their defaults.
    plain = _png_with(tmp_path / "plain.png", "a plain one\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 3")
    open_tab(page, "PNG Info")
    page.locator("#pnginfo-image input[type=file]").set_input_files(str(plain))
    page.wait_for_function(
        "() => document.querySelector('#pnginfo-infotext textarea').value.startsWith('a plain one')"
    )
    page.locator("#pnginfo-send-txt2img").click()
    page.wait_for_function("() => document.querySelector('#txt2img-prompt textarea').value === 'a plain one'")
    page.wait_for_function("() => !document.querySelector('#txt2img-enable-hr input').checked")
    assert not _checkbox(page, "txt2img-seed-extras").is_checked()
    assert not _checkbox(page, "txt2img-tiling").is_checked()
    generate_and_wait(page)
    request = _last_request(app)
    assert not request.enable_hr and not request.tiling
    assert (request.hr_scale, request.hr_prompt, request.hr_upscaler, request.denoising_strength) == (
        2,
        "",
        "Latent",
        0.7,
    )
    assert (request.subseed, request.subseed_strength, request.seed_resize_from_w) == (-1, 0, 0)


def test_extras_upscales_single_and_batch(app: App, page: Page, tmp_path: Path) -> None:
    source = _png_with(tmp_path / "small.png", "a boat\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 5")
    open_tab(page, "Extras")
    page.locator("#extras-image input[type=file]").set_input_files(str(source))
    page.locator("#extras-image img").wait_for()
    page.locator("#extras-run").click()
    wait_for_text(page, "extras-sizes", "64x64 → 128x128")
    page.wait_for_function(
        "() => { const img = document.querySelector('#extras-gallery img');"
        " return img && img.complete && img.naturalWidth === 128 && img.naturalHeight === 128; }"
    )
    saved = Image.open(_newest(app, "extras-images"))
    assert saved.size == (128, 128)
    # The source's parameters stay in the file, with what Extras did added.
    assert "Seed: 5" in saved.info["parameters"] and "Postprocess upscale by: 2" in saved.info["parameters"]

    # A result past the size limit is refused with the reason.
    page.locator("#extras-resize").get_by_text("Scale to").click()
    set_number(page, "extras-width", "9000")
    set_number(page, "extras-height", "9000")
    page.locator("#extras-run").click()
    assert "8192" in error_text(page, "extras-error")

    # A batch: every file upscaled, each size told.
    page.locator("#extras-resize").get_by_text("Scale by").click()
    set_number(page, "extras-scale", "1.5")
    page.locator("#extras-sources button[role=tab]", has_text="Batch").click()
    second = _png_with(tmp_path / "wide.png", "", size=(96, 64))
    page.locator("#extras-batch input[type=file]").set_input_files([str(source), str(second)])
    page.locator("#extras-batch td[aria-label='wide.png']").wait_for()
    page.locator("#extras-run").click()
    wait_for_text(page, "extras-sizes", "96x64 → 144x96")
    assert "64x64 → 96x96" in page.locator("#extras-sizes").inner_text()
    page.locator("#extras-error").wait_for(state="hidden")


def test_send_a_result_to_extras(app: App, page: Page) -> None:
    small_job(page, "txt2img", "a kite", seed="8")
    generate_and_wait(page)
    page.locator("#txt2img-send-extras").click()
    page.locator("#extras-image img").wait_for()
    page.locator("#extras-run").click()
    wait_for_text(page, "extras-sizes", "64x64 → 128x128")


def test_xyz_plot_from_the_script_menu_shows_the_grid_first(app: App, page: Page) -> None:
    small_job(page, "txt2img", "a plotted fox", seed="5")
    _pick(page, "txt2img-script", "X/Y/Z plot")
    prefix = "txt2img-script-x-y-z-plot"
    _pick(page, f"{prefix}-x_type", "Steps")
    page.locator(f"#{prefix}-x_values textarea, #{prefix}-x_values input").first.fill("1, 2")
    generate_and_wait(page)
    request = _last_request(app)
    assert request.script_name == "X/Y/Z plot" and request.script_args[:2] == ["Steps", "1, 2"]
    grids = sorted((app.studio.settings.outputs_dir / "txt2img-grids").rglob("*.png"))
    assert grids, "the grid is saved to txt2img-grids"
    with Image.open(grids[-1]) as grid:
        assert grid.width >= 128 and grid.height > 64  # two 64 px cells and the label band
    first = page.locator("#txt2img-gallery img").first
    assert first.evaluate("img => img.naturalWidth") == grid.width
    _pick(page, "txt2img-script", "None")

"""Tests for webui.outputs: infotext, watermark and image saving."""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from webui.outputs import (
    DEFAULT_PAYLOAD,
    ImageSaver,
    Infotext,
    embed_watermark,
    format_infotext,
    parse_infotext,
    read_infotext,
    read_watermark,
    request_fields_from_params,
)

FIXED_NOW = datetime(2026, 11, 22, 13, 45, 0)
DAY = "2026-11-22"


def fixed_clock() -> datetime:
    return FIXED_NOW


def noise_image(size: int = 512, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def gradient_image(size: int = 512) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x * 255 // size, y * 255 // size, (x + y) * 255 // (2 * size)], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


# --- infotext -------------------------------------------------------------------------------


def test_format_matches_a1111_layout() -> None:
    text = format_infotext(
        "a cat",
        "blurry",
        {
            "Steps": 20,
            "Sampler": "DPM++ 2M",
            "CFG scale": 7.0,
            "Seed": 1234,
            "Size": "512x512",
            "Denoising strength": 0.75,
            "VAE": None,
        },
    )
    assert text == (
        "a cat\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1234, Size: 512x512, Denoising strength: 0.75"
    )


def test_format_quotes_values_with_special_characters() -> None:
    text = format_infotext("p", "", {"A": "x, y", "B": "k: v", "C": 'say "hi"', "D": "two\nlines", "E": "ok"})
    last = text.splitlines()[-1]
    assert last == r'A: "x, y", B: "k: v", C: "say \"hi\"", D: "two\nlines", E: ok'


def test_format_without_negative_prompt_has_no_negative_line() -> None:
    text = format_infotext("a cat", "", {"Steps": 20, "Seed": 1, "Size": "512x512"})
    assert "Negative prompt" not in text
    assert text == "a cat\nSteps: 20, Seed: 1, Size: 512x512"


def test_round_trip_with_awkward_values_and_multiline_prompts() -> None:
    prompt = 'a cat, sitting: on a mat\n(masterpiece:1.2), "quoted"\nthird line, ünïcödé'
    negative = "blurry, lowres\nbad hands: extra fingers"
    params = {
        "Steps": 30,
        "Sampler": "Euler a",
        "CFG scale": 6.5,
        "Seed": 4294967295,
        "Size": "768x512",
        "Lora hashes": "detail: abc123, style: def456",
        "Comment": 'he said "hello", then: left\nnew line',
        "Emoji": "猫 🐱",
    }
    parsed = parse_infotext(format_infotext(prompt, negative, params))
    assert parsed == Infotext(
        prompt=prompt,
        negative_prompt=negative,
        params={key: str(value) for key, value in params.items()},
    )
    assert list(parsed.params) == list(params)


def test_round_trip_without_negative_prompt() -> None:
    text = format_infotext("line one\nline two", "", {"Steps": 5, "Seed": 2, "CFG scale": 7})
    parsed = parse_infotext(text)
    assert parsed.prompt == "line one\nline two"
    assert parsed.negative_prompt == ""
    assert parsed.params == {"Steps": "5", "Seed": "2", "CFG scale": "7"}


def test_round_trip_empty_prompt_with_negative() -> None:
    parsed = parse_infotext(format_infotext("", "ugly", {"Steps": 5, "Seed": 2, "CFG scale": 7}))
    assert (parsed.prompt, parsed.negative_prompt) == ("", "ugly")


def test_parse_real_a1111_text() -> None:
    text = (
        "masterpiece, 1girl\n"
        "Negative prompt: lowres, bad anatomy\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, "
        'Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "a: 1, b: 2", '
        "Version: v1.10.1"
    )
    parsed = parse_infotext(text)
    assert parsed.prompt == "masterpiece, 1girl"
    assert parsed.negative_prompt == "lowres, bad anatomy"
    assert parsed.params["Schedule type"] == "Karras"
    assert parsed.params["Lora hashes"] == "a: 1, b: 2"
    assert parsed.params["Version"] == "v1.10.1"
    assert len(parsed.params) == 10


def test_last_line_with_fewer_than_three_pairs_is_prompt() -> None:
    text = "a photo\nstyle: oil, mood: calm"
    assert parse_infotext(text) == Infotext(prompt=text, negative_prompt="", params={})


def test_negative_prompt_spans_lines_until_params() -> None:
    text = "p\nNegative prompt: one\ntwo\nthree\nSteps: 1, Seed: 2, CFG scale: 3"
    parsed = parse_infotext(text)
    assert parsed.negative_prompt == "one\ntwo\nthree"
    assert parsed.params == {"Steps": "1", "Seed": "2", "CFG scale": "3"}


def test_windows_line_endings() -> None:
    parsed = parse_infotext("p1\r\np2\r\nNegative prompt: n\r\nSteps: 1, Seed: 2, CFG scale: 3\r\n")
    assert (parsed.prompt, parsed.negative_prompt, parsed.params["CFG scale"]) == ("p1\np2", "n", "3")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n\n",
        ":::",
        '"',
        ",,,,",
        "Negative prompt:",
        'Steps: 20, Sampler: "Euler, CFG scale: 7, Seed: "1\\',
        'a: "\\x", b: "\\u12", c: "ok"',
        "\x00\x01\ufffd garbage: \udcff",
        "key: value, " * 500,
    ],
)
def test_parse_never_raises(text: str) -> None:
    parsed = parse_infotext(text)
    assert isinstance(parsed, Infotext)
    assert all(isinstance(value, str) for value in parsed.params.values())


def test_parse_garbage_without_params_is_all_prompt() -> None:
    assert parse_infotext("") == Infotext("", "", {})
    assert parse_infotext("just some words: here") == Infotext("just some words: here", "", {})


def test_request_fields_convert_types() -> None:
    fields = request_fields_from_params(
        {
            "Steps": "25",
            "Sampler": "DPM++ 2M",
            "Schedule type": "Karras",
            "CFG scale": "7.5",
            "Seed": "4294967295",
            "Size": "768x512",
            "Clip skip": "2",
            "Denoising strength": "0.6",
            "Mask blur": "4",
            "Eta": "0.5",
            "Model": "v1-5-pruned-emaonly",
            "Model hash": "6ce0161689",
            "Version": "v1.10.1",
        }
    )
    assert fields == {
        "steps": 25,
        "sampler_name": "DPM++ 2M",
        "scheduler": "Karras",
        "cfg_scale": 7.5,
        "seed": 4294967295,
        "width": 768,
        "height": 512,
        "clip_skip": 2,
        "denoising_strength": 0.6,
        "mask_blur": 4,
        "eta": 0.5,
        "model": "v1-5-pruned-emaonly",
        "model_hash": "6ce0161689",
    }
    assert type(fields["steps"]) is int and type(fields["cfg_scale"]) is float


def test_request_fields_skip_bad_values() -> None:
    fields = request_fields_from_params(
        {
            "Steps": "many",
            "CFG scale": "nan",
            "Seed": "12.5",
            "Size": "big",
            "Clip skip": "",
            "Denoising strength": "0,5",
            "Mask blur": "4.0",
            "Eta DDIM": "0.1",
            "Sampler": "   ",
        }
    )
    assert fields == {"mask_blur": 4, "eta": 0.1}


@pytest.mark.parametrize("size", ["512", "x512", "512x", "axb", "512x512x3"])
def test_request_fields_reject_malformed_size(size: str) -> None:
    assert "width" not in request_fields_from_params({"Size": size})


def test_parsed_infotext_feeds_request_fields() -> None:
    text = format_infotext("p", "n", {"Steps": 20, "CFG scale": 7.0, "Seed": 9, "Size": "640x448"})
    fields = request_fields_from_params(parse_infotext(text).params)
    assert fields == {"steps": 20, "cfg_scale": 7.0, "seed": 9, "width": 640, "height": 448}


# --- watermark ------------------------------------------------------------------------------


@pytest.mark.parametrize("make_image", [noise_image, gradient_image])
def test_watermark_round_trips_on_512(make_image) -> None:
    original = make_image()
    marked = embed_watermark(original)
    assert marked.size == original.size and marked.mode == "RGB"
    assert marked.tobytes() != original.tobytes()
    assert read_watermark(marked) == DEFAULT_PAYLOAD
    assert read_watermark(original) != DEFAULT_PAYLOAD


def test_watermark_is_a_small_change() -> None:
    # The raw library output changes most pixels of a noisy image (PSNR ~15 dB); ours must not.
    original = np.asarray(noise_image(), dtype=np.float64)
    marked = np.asarray(embed_watermark(noise_image()), dtype=np.float64)
    changed = np.any(original != marked, axis=-1).mean()
    psnr = 10 * np.log10(255**2 / np.mean((original - marked) ** 2))
    assert changed < 0.1
    assert psnr > 35
    assert np.array_equal(original[..., 0], marked[..., 0])  # red is untouched by a U-only edit


def test_watermark_custom_payload() -> None:
    marked = embed_watermark(noise_image(seed=3), b"abc")
    assert read_watermark(marked, 3) == b"abc"


def test_watermark_leaves_small_image_untouched() -> None:
    small = noise_image(64)
    assert embed_watermark(small).tobytes() == small.tobytes()
    assert read_watermark(small) == b""


def test_watermark_keeps_rgba_alpha() -> None:
    rgba = noise_image().convert("RGBA")
    alpha = Image.fromarray(np.tile(np.arange(512, dtype=np.uint8)[None, :] // 2, (512, 1)), "L")
    rgba.putalpha(alpha)
    marked = embed_watermark(rgba)
    assert marked.mode == "RGBA"
    assert marked.getchannel("A").tobytes() == alpha.tobytes()
    assert read_watermark(marked) == DEFAULT_PAYLOAD


# --- saving ---------------------------------------------------------------------------------


def test_save_layout_counter_and_parameters(tmp_path: Path) -> None:
    saver = ImageSaver(tmp_path, watermark=False, clock=fixed_clock)
    text = format_infotext("a cat, on: mat", "", {"Steps": 20, "Seed": 42, "Size": "64x64"})
    first = saver.save(noise_image(64), mode="txt2img", seed=42, infotext=text)
    second = saver.save(noise_image(64, 1), mode="txt2img", seed=43, infotext=text)
    other = saver.save(noise_image(64), mode="img2img", seed=7, infotext="x")
    assert first == tmp_path / "txt2img-images" / DAY / "00000-42.png"
    assert second == tmp_path / "txt2img-images" / DAY / "00001-43.png"
    assert other == tmp_path / "img2img-images" / DAY / "00000-7.png"
    assert read_infotext(first) == text
    with Image.open(second) as reopened:
        assert reopened.text["parameters"] == text
        assert reopened.format == "PNG"


def test_counter_continues_after_existing_files(tmp_path: Path) -> None:
    folder = tmp_path / "txt2img-images" / DAY
    folder.mkdir(parents=True)
    (folder / "00012-999.png").write_bytes(b"")
    (folder / "00003-1.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not numbered")
    (folder / ".00099-1.deadbeef.tmp").write_bytes(b"")  # a crashed save's temp file is ignored
    saver = ImageSaver(tmp_path, watermark=False, clock=fixed_clock)
    assert saver.save(noise_image(64), mode="txt2img", seed=5, infotext="").name == "00013-5.png"


def test_save_applies_watermark_when_enabled(tmp_path: Path) -> None:
    path = ImageSaver(tmp_path, clock=fixed_clock).save(noise_image(), mode="txt2img", seed=1, infotext="p")
    with Image.open(path) as saved:
        assert read_watermark(saved) == DEFAULT_PAYLOAD


def test_save_without_watermark_keeps_pixels(tmp_path: Path) -> None:
    image = noise_image()
    path = ImageSaver(tmp_path, watermark=False, clock=fixed_clock).save(
        image, mode="txt2img", seed=1, infotext="p"
    )
    with Image.open(path) as saved:
        assert saved.tobytes() == image.tobytes()


def test_failed_encoding_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG\r\n\x1a\n half an image")
        raise OSError("disk full")

    saver = ImageSaver(tmp_path, watermark=False, clock=fixed_clock)
    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        saver.save(noise_image(64), mode="txt2img", seed=1, infotext="p")
    folder = tmp_path / "txt2img-images" / DAY
    assert list(folder.iterdir()) == []

    monkeypatch.undo()
    assert saver.save(noise_image(64), mode="txt2img", seed=1, infotext="p").name == "00000-1.png"


def test_rejects_mode_that_escapes_root(tmp_path: Path) -> None:
    saver = ImageSaver(tmp_path, watermark=False, clock=fixed_clock)
    with pytest.raises(ValueError):
        saver.save(noise_image(64), mode="../evil", seed=1, infotext="")


def test_concurrent_saves_get_distinct_files(tmp_path: Path) -> None:
    saver = ImageSaver(tmp_path, watermark=False, clock=fixed_clock)
    start = threading.Barrier(8)
    paths: list[Path] = []
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            start.wait()
            paths.append(saver.save(noise_image(64, seed), mode="txt2img", seed=seed, infotext=str(seed)))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(paths)) == 8
    assert sorted(path.name[:5] for path in paths) == [f"{n:05d}" for n in range(8)]
    for path in paths:
        assert read_infotext(path) == path.stem.split("-")[1]


def test_read_infotext_absent_and_non_image(tmp_path: Path) -> None:
    plain = tmp_path / "plain.png"
    noise_image(64).save(plain)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    assert read_infotext(plain) is None
    assert read_infotext(junk) is None


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_read_infotext_from_exif_user_comment(tmp_path: Path, fmt: str) -> None:
    text = "a cat, ünïcödé\nNegative prompt: dog\nSteps: 20, Seed: 1, CFG scale: 7"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + text.encode("utf-16-be")
    path = tmp_path / f"image.{fmt.lower()}"
    noise_image(64).save(path, fmt, exif=exif)
    assert read_infotext(path) == text


def test_grids_are_numbered_in_their_own_folder(tmp_path: Path) -> None:
    saver = ImageSaver(tmp_path, watermark=False)
    image = saver.save(Image.new("RGB", (8, 8)), mode="txt2img", seed=1, infotext="x")
    grid = saver.save(Image.new("RGB", (8, 8)), mode="txt2img", seed=1, infotext="x", kind="grids")
    assert image.parent.parent.name == "txt2img-images" and grid.parent.parent.name == "txt2img-grids"
    assert grid.name.startswith("00000-")
    with pytest.raises(ValueError, match="kind"):
        saver.save(Image.new("RGB", (8, 8)), mode="txt2img", seed=1, infotext="x", kind="../escape")


def _save_many(root: str, count: int) -> list[str]:
    saver = ImageSaver(Path(root), watermark=False, clock=lambda: datetime(2024, 1, 2))
    image = Image.new("RGB", (8, 8))
    return [saver.save(image, mode="txt2img", seed=1, infotext="x").name for _ in range(count)]


def test_two_processes_saving_into_one_folder_never_take_the_same_number(tmp_path: Path) -> None:
    """Cluster workers on one machine share the outputs folder; each file keeps its own number."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        names = [name for batch in pool.map(_save_many, [str(tmp_path)] * 2, [25, 25]) for name in batch]
    assert len(set(names)) == 50
    assert len(list((tmp_path / "txt2img-images" / "2024-01-02").glob("*.png"))) == 50

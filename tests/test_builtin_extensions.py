"""The extensions that ship in extensions-builtin/: wildcards and caption, through real jobs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.extension_helpers import COLORS, make_studio
from webui.engine.request import GenerationError, GenerationRequest
from webui.outputs import parse_infotext
from webui.studio import Studio

SIDE = 64


@pytest.fixture
def studio(tiny_dir: Path, tmp_path: Path) -> Studio:
    return make_studio(tiny_dir, tmp_path)


def _request(**fields: object) -> GenerationRequest:
    return replace(GenerationRequest(prompt="a cat", steps=1, width=SIDE, height=SIDE, seed=7), **fields)


def _prompt(result) -> str:
    return parse_infotext(result.infotexts[0]).prompt


def _wildcards(studio: Studio, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = studio.settings.data_dir / "wildcards" / f"{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


# -- wildcards --------------------------------------------------------------------------------
def test_a_wildcard_picks_a_line_that_follows_the_seed(studio: Studio) -> None:
    _wildcards(studio, {"animal": "# comment\ncat\n\ndog\nfox\nowl\n"})
    prompts = {
        seed: _prompt(studio.generate(_request(prompt="a __animal__", seed=seed))) for seed in range(8)
    }
    assert set(prompts.values()) <= {"a cat", "a dog", "a fox", "a owl"}
    assert len(set(prompts.values())) > 1  # different seeds, different picks
    again = studio.generate(_request(prompt="a __animal__", seed=3))
    assert _prompt(again) == prompts[3]  # the same seed, the same pick


def test_the_shipped_colour_list_nested_wildcards_and_the_negative_prompt(studio: Studio) -> None:
    _wildcards(studio, {"thing/pet": "__color__ cat", "bad": "blurry"})
    result = studio.generate(_request(prompt="a __thing/pet__", negative_prompt="__bad__"))
    parsed = parse_infotext(result.infotexts[0])
    colour = parsed.prompt.removeprefix("a ").removesuffix(" cat")
    assert colour in COLORS and parsed.negative_prompt == "blurry"


def test_a_random_seed_is_fixed_first_so_the_infotext_reproduces_it(studio: Studio) -> None:
    _wildcards(studio, {"animal": "cat\ndog\nfox\nowl\nemu\nyak\n"})
    first = studio.generate(_request(prompt="a __animal__", seed=-1))
    seed = int(parse_infotext(first.infotexts[0]).params["Seed"])
    again = studio.generate(_request(prompt="a __animal__", seed=seed))
    assert _prompt(again) == _prompt(first)
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(again.images[0]))


def test_wildcards_can_be_switched_off_and_a_missing_file_is_a_clear_error(studio: Studio) -> None:
    off = studio.generate(_request(prompt="a __animal__", alwayson_scripts={"Wildcards": [False]}))
    assert _prompt(off) == "a __animal__"
    with pytest.raises(
        GenerationError, match=r"Wildcards: no wildcard file animal.txt for __animal__.*__color__"
    ):
        studio.generate(_request(prompt="a __animal__"))
    _wildcards(studio, {"empty": "\n# nothing\n"})
    with pytest.raises(GenerationError, match="has no lines"):
        studio.generate(_request(prompt="__empty__"))
    _wildcards(studio, {"loop": "__loop__"})
    assert _prompt(studio.generate(_request(prompt="__loop__"))) == "__loop__"  # stops, does not hang


def test_the_wildcards_folder_setting_applies_at_once(studio: Studio, tmp_path: Path) -> None:
    elsewhere = tmp_path / "mine"
    elsewhere.mkdir()
    (elsewhere / "animal.txt").write_text("heron\n")
    studio.apply_settings(
        replace(studio.settings, extension_settings={"wildcards": {"folder": str(elsewhere)}})
    )
    assert _prompt(studio.generate(_request(prompt="a __animal__"))) == "a heron"


# -- caption ----------------------------------------------------------------------------------
def test_caption_stamps_the_image_before_it_is_saved(studio: Studio) -> None:
    plain = studio.generate(_request())
    assert plain.images[0].size == (SIDE, SIDE)  # off unless asked
    result = studio.generate(_request(alwayson_scripts={"caption": [True, "seed {seed}, {steps} steps"]}))
    image = result.images[0]
    assert image.width == SIDE and image.height > SIDE
    assert np.array_equal(np.asarray(image)[:SIDE], np.asarray(plain.images[0]))  # the picture on top
    strip = np.asarray(image)[SIDE:]
    assert (strip < 100).any() and (strip == 255).mean() > 0.5  # dark text on white
    with Image.open(result.paths[0]) as saved:
        assert saved.size == image.size
    assert parse_infotext(result.infotexts[0]).params["Caption"] == "seed {seed}, {steps} steps"


def test_caption_on_top_and_written_beside_the_file(studio: Studio) -> None:
    result = studio.generate(
        _request(alwayson_scripts={"Caption": [True, "{prompt} / {model} / {seed}", "top", True]})
    )
    top = np.asarray(result.images[0])
    assert (top[: top.shape[0] - SIDE] < 100).any()  # the strip is above the picture
    text = result.paths[0].with_suffix(".txt").read_text()
    assert text == "a cat / tiny-sd15 / 7\n"


def test_caption_refuses_an_unknown_field_before_the_job(studio: Studio) -> None:
    with pytest.raises(GenerationError, match=r"unknown field \{colour\}") as refused:
        studio.preflight(_request(alwayson_scripts={"caption": [True, "{colour}"]}))
    assert refused.value.field == "alwayson_scripts.Caption"

"""SD 3.5 in the app: listed, selected beside SD 1.5, generating through the studio with infotext
that repeats the image, and what it cannot do yet refused by name."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from webui.engine.request import GenerationError, GenerationRequest
from webui.model_manager.archs import Arch
from webui.model_manager.registry import ModelKind
from webui.outputs import parse_infotext, read_infotext, request_fields_from_params
from webui.settings import Settings
from webui.studio import Studio
from webui.tools.tiny_sd3 import write_tiny_sd3_checkpoint, write_tiny_sd3_lora, write_tiny_text_encoder_files


@pytest.fixture(scope="module")
def studio(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Studio:
    root = tmp_path_factory.mktemp("sd3-app")
    checkpoints = root / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    shutil.copy(tiny_dir / "tiny-sd15.safetensors", checkpoints / "a-sd15.safetensors")
    write_tiny_sd3_checkpoint("sd35-medium", checkpoints / "b-sd35m.safetensors")
    # A file without its encoders takes them from models/text_encoder, as A1111 and Forge keep them.
    write_tiny_sd3_checkpoint("sd35-medium", checkpoints / "c-sd35m-bare.safetensors", text_encoders=False)
    write_tiny_text_encoder_files(root / "models" / "text_encoder")
    # Only the live-preview test runs on it: its first job is the first to draw its previews.
    write_tiny_sd3_checkpoint("sd35-medium", checkpoints / "d-sd35m-previews.safetensors", seed=5)
    write_tiny_sd3_lora(root / "models" / "Lora" / "sd3-style.safetensors")
    return Studio(Settings.for_data_dir(root, watermark=False, device="cpu", precision="fp32"))


def _request(**changes) -> GenerationRequest:
    values = {"prompt": "a red circle", "negative_prompt": "blur", "steps": 3, "width": 64, "height": 64}
    values.update(changes)
    values.setdefault("sampler_name", "Euler")
    return GenerationRequest(**values, seed=7)


def test_sd35_files_are_listed_with_their_kind(studio: Studio) -> None:
    files = {file.name: file for file in studio.models.checkpoints()}
    assert files["b-sd35m"].arch is Arch.SD3 and files["b-sd35m"].label.startswith("SD 3.5 Medium")
    assert "text encoder" in files["c-sd35m-bare"].label
    assert files["a-sd15"].arch is Arch.SD1


def test_switching_between_sd15_and_sd35_generates_on_each(studio: Studio) -> None:
    studio.models.select_checkpoint("b-sd35m")
    first = studio.generate(_request(), save=False)
    again = studio.generate(_request(), save=False)
    assert first.images[0].size == (64, 64)
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(again.images[0]))  # the seed repeats it
    info = parse_infotext(first.infotexts[0]).params
    assert (info["Seed"], info["Sampler"], info["Model"], info["Steps"]) == ("7", "Euler", "b-sd35m", "3")
    other_prompt = studio.generate(_request(prompt="a blue square"), save=False)
    assert not np.array_equal(np.asarray(first.images[0]), np.asarray(other_prompt.images[0]))

    studio.models.select_checkpoint("a-sd15")
    sd15 = studio.generate(_request(), save=False)
    assert parse_infotext(sd15.infotexts[0]).params["Model"] == "a-sd15"
    studio.models.select_checkpoint("b-sd35m")
    assert np.array_equal(
        np.asarray(studio.generate(_request(), save=False).images[0]), np.asarray(first.images[0])
    )


def test_encoders_come_from_the_text_encoder_folder(studio: Studio) -> None:
    result = studio.generate(_request(), checkpoint="c-sd35m-bare", save=False)
    assert result.images[0].size == (64, 64)


def test_img2img_saved_with_infotext(studio: Studio) -> None:
    start = Image.new("RGB", (64, 64), (200, 30, 30))
    result = studio.generate(
        _request(init_image=start, denoising_strength=0.5), checkpoint="b-sd35m", save=True
    )
    saved = read_infotext(result.paths[0])
    assert "Denoising strength: 0.5" in saved and "Model: b-sd35m" in saved


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"sampler_name": "Euler a"}, "sampler_name", "does not fit flow matching"),
        ({"tiling": True}, "tiling", "tiling"),
        ({"width": 72}, "width", "multiples of"),
        ({"subseed_strength": 0.5}, "subseed_strength", "variation seeds"),
    ],
)
def test_what_sd35_cannot_do_is_refused_by_name(studio: Studio, changes, field: str, words: str) -> None:
    with pytest.raises(GenerationError) as refused:
        studio.generate(_request(**changes), checkpoint="b-sd35m", save=False)
    assert refused.value.field == field and words in str(refused.value)


@pytest.mark.parametrize(("fill", "only_masked"), [(0, False), (2, True)])
def test_inpainting_changes_the_masked_area_only(studio: Studio, fill: int, only_masked: bool) -> None:
    start = Image.new("RGB", (64, 64), (200, 30, 30))
    start.paste((20, 160, 40), (32, 0, 64, 64))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 32))
    request = _request(
        init_image=start,
        mask=mask,
        mask_blur=0,
        denoising_strength=0.9,
        inpainting_fill=fill,
        inpaint_full_res=only_masked,
        inpaint_full_res_padding=0,
    )
    result = studio.generate(request, checkpoint="b-sd35m", save=False)
    before, after = np.asarray(start).astype(int), np.asarray(result.images[0]).astype(int)
    assert after.shape == before.shape
    assert np.abs(after[32:] - before[32:]).max() <= 1 and np.abs(after[:, 32:] - before[:, 32:]).max() <= 1
    assert np.abs(after[:32, :32] - before[:32, :32]).mean() > 10
    info = parse_infotext(result.infotexts[0]).params
    assert info["Denoising strength"] == "0.9" and info.get("Mask blur") == "0"


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_fix_runs_a_second_pass_at_the_hires_size(studio: Studio, upscaler: str) -> None:
    steps: list[tuple[int, int]] = []
    request = _request(
        enable_hr=True,
        hr_scale=2,
        hr_upscaler=upscaler,
        hr_second_pass_steps=2,
        hr_sampler_name="Heun",
        denoising_strength=0.5,
    )
    result = studio.generate(
        request, checkpoint="b-sd35m", save=False, on_step=lambda info: steps.append((info.step, info.total))
    )
    assert result.images[0].size == (128, 128)
    info = parse_infotext(result.infotexts[0]).params
    assert (info["Hires upscale"], info["Hires steps"], info["Hires upscaler"]) == ("2", "2", upscaler)
    assert info["Hires sampler"] == "Heun"
    assert steps and steps[-1][0] == steps[-1][1] > 3  # the second pass's steps continue the count
    plain = studio.generate(_request(), checkpoint="b-sd35m", save=False)
    assert plain.images[0].size == (64, 64)


def test_an_sd35_lora_changes_the_picture_and_weight_zero_does_not(studio: Studio) -> None:
    files = {file.name: file for file in studio.models.registry.files(ModelKind.LORA)}
    assert files["sd3-style"].label == "LoRA (SD 3.5)"
    plain = np.asarray(studio.generate(_request(), checkpoint="b-sd35m", save=False).images[0])
    styled = studio.generate(
        _request(prompt="a red circle <lora:sd3-style:1>"), checkpoint="b-sd35m", save=False
    )
    zero = studio.generate(
        _request(prompt="a red circle <lora:sd3-style:0>"), checkpoint="b-sd35m", save=False
    )
    assert np.abs(np.asarray(styled.images[0]).astype(int) - plain).mean() > 1
    assert np.array_equal(np.asarray(zero.images[0]), plain)
    assert "sd3-style" in styled.infotexts[0]
    again = studio.generate(_request(), checkpoint="b-sd35m", save=False)
    assert np.array_equal(np.asarray(again.images[0]), plain)  # switched off for the next job


def test_skip_layer_guidance_changes_the_picture_and_its_infotext_repeats_it(studio: Studio) -> None:
    plain = np.asarray(studio.generate(_request(), checkpoint="b-sd35m", save=False).images[0])
    guided = studio.generate(
        _request(slg_scale=3.0, slg_layers="1", slg_start=0.0, slg_stop=0.9), checkpoint="b-sd35m", save=False
    )
    assert np.abs(np.asarray(guided.images[0]).astype(int) - plain).mean() > 0.5
    parsed = parse_infotext(guided.infotexts[0])
    assert (parsed.params["SLG scale"], parsed.params["SLG layers"]) == ("3", "1")
    assert (
        "SLG scale"
        not in parse_infotext(
            studio.generate(_request(), checkpoint="b-sd35m", save=False).infotexts[0]
        ).params
    )  # off: not written
    fields = request_fields_from_params(parsed.params)
    pasted = GenerationRequest(
        prompt=parsed.prompt,
        negative_prompt=parsed.negative_prompt,
        **{name: value for name, value in fields.items() if name not in ("model", "model_hash")},
    )
    assert (pasted.slg_scale, pasted.slg_layers, pasted.slg_start, pasted.slg_stop) == (3.0, "1", 0.0, 0.9)
    again = studio.generate(pasted, checkpoint="b-sd35m", save=False)
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(guided.images[0]))


@pytest.mark.parametrize(
    ("checkpoint", "changes", "field", "words"),
    [
        ("b-sd35m", {"slg_layers": "1, x"}, "slg_layers", "block numbers"),
        ("b-sd35m", {"slg_layers": "99"}, "slg_layers", "among 0..3"),
        ("b-sd35m", {"slg_start": 0.5, "slg_stop": 0.2}, "slg_start", "start before it stops"),
        ("a-sd15", {}, "slg_scale", "SD 3.5 models"),
    ],
)
def test_bad_skip_layer_guidance_is_refused_by_name(
    studio: Studio, checkpoint: str, changes: dict, field: str, words: str
) -> None:
    with pytest.raises(GenerationError) as refused:
        studio.generate(_request(slg_scale=3.0, **changes), checkpoint=checkpoint, save=False)
    assert refused.value.field == field and words in str(refused.value)


def test_linear_previews_come_from_a_map_fitted_once_to_the_models_vae(studio: Studio) -> None:
    """SD 3.5's 16 channels have no fixed table: its previews are latent-sized pictures from a map
    fitted to the model's VAE (no full decode per step), fitted once per model."""
    sizes: list[tuple[int, int]] = []

    def look(info) -> None:
        if info.preview_due and info.preview is not None:
            sizes.append(info.preview.image(Arch.SD3).size)

    # Attached to the studio's own logger: other tests' logging setups may stop propagation.
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("webui.studio")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        for _ in range(2):
            studio.generate(_request(), on_step=look, checkpoint="d-sd35m-previews", save=False)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert sizes == [(8, 8)] * 6
    assert sum("fitted linear previews" in record.getMessage() for record in records) == 1


def test_prompt_weights_change_an_sd35_picture_and_weight_one_does_not(studio: Studio) -> None:
    plain = np.asarray(studio.generate(_request(), checkpoint="b-sd35m", save=False).images[0])
    one = studio.generate(_request(prompt="a (red:1.0) circle"), checkpoint="b-sd35m", save=False)
    heavy = studio.generate(_request(prompt="a (red:1.6) circle"), checkpoint="b-sd35m", save=False)
    assert np.array_equal(np.asarray(one.images[0]), plain)
    assert np.abs(np.asarray(heavy.images[0]).astype(int) - plain).mean() > 0.5


def test_a_kohya_layout_sd35_lora_draws_what_its_merged_weights_draw(tmp_path: Path) -> None:
    """A LoRA in kohya's layout (Stability's module names, fused qkv, alphas) applied through the
    app gives the picture of a checkpoint whose weights have the LoRA merged in by hand, in
    Stability's own layout: every name, split and swap of the conversion is checked against
    diffusers' reading of the full file."""
    checkpoints = tmp_path / "models" / "Stable-diffusion"
    base = write_tiny_sd3_checkpoint("sd35-medium", checkpoints / "base.safetensors")
    weights = load_file(str(base))
    depth, rank, alpha = 4, 2, 1.0  # scale alpha / rank = 0.5
    modules = [
        "joint_blocks.0.x_block.attn.qkv",
        "joint_blocks.0.x_block.attn2.qkv",
        "joint_blocks.1.context_block.attn.proj",
        "joint_blocks.2.x_block.mlp.fc1",
        f"joint_blocks.{depth - 1}.context_block.adaLN_modulation.1",  # halves swapped in diffusers
        "final_layer.adaLN_modulation.1",  # halves swapped in diffusers
        "context_embedder",
    ]
    generator = torch.Generator().manual_seed(3)
    lora: dict[str, torch.Tensor] = {}
    merged = dict(weights)
    for module in modules:
        key = f"model.diffusion_model.{module}.weight"
        outputs, inputs = weights[key].shape
        down = torch.randn(rank, inputs, generator=generator) * 0.3
        up = torch.randn(outputs, rank, generator=generator) * 0.3
        name = "lora_unet_" + module.replace(".", "_")
        lora |= {
            f"{name}.lora_down.weight": down,
            f"{name}.lora_up.weight": up,
            f"{name}.alpha": torch.tensor(alpha),
        }
        merged[key] = (weights[key].float() + (up @ down) * (alpha / rank)).to(weights[key].dtype)
    save_file(merged, str(checkpoints / "merged.safetensors"), metadata={"format": "pt"})
    (tmp_path / "models" / "Lora").mkdir()
    save_file(
        {k: v.contiguous() for k, v in lora.items()}, str(tmp_path / "models" / "Lora" / "kohya.safetensors")
    )
    studio = Studio(Settings.for_data_dir(tmp_path, watermark=False, device="cpu", precision="fp32"))
    files = {file.name: file for file in studio.models.registry.files(ModelKind.LORA)}
    assert files["kohya"].label == "LoRA (SD 3.5)"

    def picture(prompt: str, checkpoint: str) -> np.ndarray:
        result = studio.generate(_request(prompt=prompt, cfg_scale=1), checkpoint=checkpoint, save=False)
        return np.asarray(result.images[0]).astype(int)

    with_lora = picture("a red circle <lora:kohya:1>", "base")
    assert np.abs(with_lora - picture("a red circle", "base")).mean() > 1
    assert np.abs(with_lora - picture("a red circle", "merged")).max() <= 2

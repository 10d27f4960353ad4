"""SD 3.5: the shipped T5 tokenizer, detection and conversion of Stability's single files, text
encoders found in folders, and the flow-matching loop against diffusers' own pipeline."""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    SD3Transformer2DModel,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3InpaintPipeline,
    StableDiffusion3Pipeline,
)
from diffusers.loaders.single_file_utils import infer_diffusers_model_type
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from webui.engine.families.flow import (
    SkipLayerGuidance,
    encode_prompts,
    image_to_latents,
    img2img,
    latent_mask,
    make_flow_scheduler,
    sample,
    txt2img,
)
from webui.engine.families.flow_weights import encode_weighted, token_weights
from webui.engine.request import MaskedContent
from webui.model_manager.load import load_model
from webui.model_manager.offload import MemoryMode, attach_offload
from webui.model_manager.placement import model_bytes, module_tensors, move_model
from webui.model_manager.sd3.build import SD3Components, load_sd3
from webui.model_manager.sd3.convert import convert_transformer
from webui.model_manager.sd3.encoder_files import encoder_folders
from webui.model_manager.sd3.export import transformer_to_stability
from webui.model_manager.sd3.folder import is_sd3_folder, load_sd3_folder
from webui.model_manager.sd3.kohya_lora import KohyaLoraError, kohya_sd3_to_diffusers
from webui.model_manager.sd3.spec import SD35_LARGE, SD35_MEDIUM, detect_sd3, is_sd3_checkpoint
from webui.model_manager.state_dict import CheckpointError, read_tensor_shapes
from webui.model_manager.t5_tokenizer import T5TokenizerError, build_t5_tokenizer
from webui.tools import tiny_checkpoint
from webui.tools.tiny_sd3 import (
    tiny_transformer_config,
    write_tiny_sd3_checkpoint,
    write_tiny_text_encoder_files,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sd3")
    write_tiny_sd3_checkpoint("sd35-medium", folder / "medium.safetensors")
    write_tiny_sd3_checkpoint("sd35-large", folder / "large.safetensors")
    write_tiny_sd3_checkpoint("sd35-medium", folder / "medium-bare.safetensors", text_encoders=False)
    write_tiny_sd3_checkpoint("sd35-medium", folder / "medium-fp8.safetensors", t5_storage="fp8")
    write_tiny_sd3_checkpoint("sd35-medium", folder / "medium-scaled.safetensors", t5_storage="scaled_fp8")
    write_tiny_text_encoder_files(folder / "models" / "clip")
    return folder


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images])


def _diffusers_txt2img(
    components: SD3Components, prompt: str, seed: int, steps: int, cfg: float
) -> np.ndarray:
    pipe = StableDiffusion3Pipeline(
        transformer=components.transformer,
        scheduler=components.make_scheduler(),
        vae=components.vae,
        text_encoder=components.clip_l,
        tokenizer=components.tokenizer_l,
        text_encoder_2=components.clip_g,
        tokenizer_2=components.tokenizer_g,
        text_encoder_3=components.t5,
        tokenizer_3=components.tokenizer_t5,
    )
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(seed)
    result = pipe(
        prompt, height=64, width=64, num_inference_steps=steps, guidance_scale=cfg, generator=generator
    )
    return _pixels(result.images)


def _ours(components: SD3Components, prompt: str, seed: int, steps: int = 4, cfg: float = 5.0) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(seed)
    images = txt2img(
        components, [prompt], width=64, height=64, steps=steps, guidance_scale=cfg, generator=generator
    )
    return _pixels(images)


# --- T5 tokenizer -------------------------------------------------------------------------------


def test_shipped_t5_tokenizer_gives_t5s_ids(no_network: list[object]) -> None:
    tokenizer = build_t5_tokenizer()
    assert len(tokenizer) == 32100
    assert tokenizer("Hello world").input_ids == [8774, 296, 1]
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 32099]) == ["<pad>", "</s>", "<unk>", "<extra_id_0>"]
    padded = tokenizer(["a"], padding="max_length", max_length=6, truncation=True).input_ids[0]
    assert padded == [3, 9, 1, 0, 0, 0]
    assert no_network == []


def test_t5_tokenizer_from_a_comfyui_install(tmp_path: Path) -> None:
    folder = tmp_path / "ComfyUI" / "comfy" / "text_encoders" / "t5_tokenizer"
    folder.mkdir(parents=True)
    raw = resources.files("webui.model_manager.assets").joinpath("t5_tokenizer.json.gz").read_bytes()
    (folder / "tokenizer.json").write_bytes(gzip.decompress(raw))
    for source in (tmp_path / "ComfyUI", folder):
        assert build_t5_tokenizer(source)("a photo of an astronaut").input_ids == [
            3,
            9,
            1202,
            13,
            46,
            30059,
            1,
        ]
    with pytest.raises(T5TokenizerError, match="no T5 tokenizer.json"):
        build_t5_tokenizer(tmp_path)


# --- detection and conversion -------------------------------------------------------------------


def test_detects_medium_and_large_from_shapes(sd3_dir: Path) -> None:
    medium = read_tensor_shapes(sd3_dir / "medium.safetensors")
    spec = detect_sd3(medium.tensors, medium.metadata, "medium")
    assert spec.variant == SD35_MEDIUM and spec.kind == "SD 3.5 Medium"
    assert spec.transformer_config == tiny_transformer_config("sd35-medium")
    assert spec.missing_encoders == ()
    assert (spec.clip_l.width, spec.clip_g.width, spec.t5.width) == (16, 32, 64)
    assert spec.vae_config["latent_channels"] == 16 and spec.vae_config["use_quant_conv"] is False

    large = read_tensor_shapes(sd3_dir / "large.safetensors")
    spec = detect_sd3(large.tensors, {"modelspec.title": "SD 3.5 Large Turbo"}, "large")
    assert spec.variant == SD35_LARGE and spec.transformer_config["num_layers"] == 38
    assert spec.transformer_config["dual_attention_layers"] == () and spec.kind == "SD 3.5 Large Turbo"

    bare = read_tensor_shapes(sd3_dir / "medium-bare.safetensors")
    assert detect_sd3(bare.tensors, {}, "bare").missing_encoders == ("clip_l", "clip_g", "t5xxl")
    assert is_sd3_checkpoint(medium.tensors)
    assert not is_sd3_checkpoint(["model.diffusion_model.input_blocks.0.0.weight"])


# The released models' shapes, built on the meta device (no memory): what a real file holds.
REAL_MMDITS = {
    "sd35_medium": {
        "num_layers": 24,
        "num_attention_heads": 24,
        "caption_projection_dim": 1536,
        "pos_embed_max_size": 384,
        "dual_attention_layers": tuple(range(13)),
    },
    "sd35_large": {
        "num_layers": 38,
        "num_attention_heads": 38,
        "caption_projection_dim": 2432,
        "pos_embed_max_size": 192,
        "dual_attention_layers": (),
    },
}
REAL_ENCODERS = {
    "clip_l": CLIPTextConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        hidden_act="quick_gelu",
        projection_dim=768,
    ),
    "clip_g": CLIPTextConfig(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=20,
        hidden_act="gelu",
        projection_dim=1280,
    ),
}


@pytest.mark.parametrize("kind", sorted(REAL_MMDITS))
def test_real_sized_files_are_read_as_diffusers_reads_them(kind: str) -> None:
    config = {
        "sample_size": 128,
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 16,
        "attention_head_dim": 64,
        "joint_attention_dim": 4096,
        "pooled_projection_dim": 2048,
        "qk_norm": "rms_norm",
        **REAL_MMDITS[kind],
    }
    with torch.device("meta"):
        transformer = SD3Transformer2DModel(**config)
        encoders = {role: CLIPTextModelWithProjection(c).state_dict() for role, c in REAL_ENCODERS.items()}
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=32128,
                d_model=4096,
                d_kv=64,
                d_ff=10240,
                num_layers=24,
                num_heads=64,
                feed_forward_proj="gated-gelu",
                is_encoder_decoder=False,
            )
        )
    tensors = {
        "model.diffusion_model." + key: value
        for key, value in transformer_to_stability(transformer.state_dict(), config["num_layers"]).items()
    }
    for role, weights in (*encoders.items(), ("t5xxl", t5.state_dict())):
        tensors |= {f"text_encoders.{role}.transformer.{key}": value for key, value in weights.items()}
    assert infer_diffusers_model_type(tensors) == kind  # diffusers' own classifier agrees
    spec = detect_sd3(tensors, {}, kind)
    assert spec.variant == kind.replace("_", "-") and spec.transformer_config == config
    for role, real in REAL_ENCODERS.items():
        found = spec.encoder(role).config
        assert {
            key: found[key]
            for key in (
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "hidden_act",
            )
        } == {
            key: getattr(real, key)
            for key in (
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "hidden_act",
            )
        }
    assert {k: spec.t5.config[k] for k in ("d_model", "d_kv", "d_ff", "num_layers", "num_heads")} == {
        "d_model": 4096,
        "d_kv": 64,
        "d_ff": 10240,
        "num_layers": 24,
        "num_heads": 64,
    }


def test_an_unknown_mmdit_variant_is_named(sd3_dir: Path) -> None:
    tensors = read_tensor_shapes(sd3_dir / "medium.safetensors").tensors
    without_dual = {key: value for key, value in tensors.items() if ".attn2." not in key}
    with pytest.raises(CheckpointError, match=r"variant not known here \(4 joint blocks, width 32"):
        detect_sd3(without_dual, {}, "odd.safetensors")


def test_stability_layout_round_trips_through_diffusers_converter() -> None:
    torch.manual_seed(0)
    config = tiny_transformer_config("sd35-medium")
    original = SD3Transformer2DModel(**config).state_dict()
    converted = convert_transformer(transformer_to_stability(original, int(config["num_layers"])))
    assert converted.keys() == original.keys()
    assert all(torch.equal(converted[key], original[key]) for key in original)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_loads_in_half_precision_with_t5_output_layers_in_fp32_under_fp16(sd3_dir: Path, dtype) -> None:
    components = load_sd3(sd3_dir / "medium.safetensors", CPU, dtype)
    assert components.transformer.dtype == dtype and components.clip_g.dtype == dtype
    wo = components.t5.encoder.block[0].layer[1].DenseReluDense.wo.weight
    assert wo.dtype == (torch.float32 if dtype == torch.float16 else dtype)
    conditioning = encode_prompts(components, ["a cat"])
    assert conditioning.embeds.dtype == conditioning.pooled.dtype == dtype
    half = _ours(components, "a cat", 1, steps=3).astype(int)
    full = _ours(load_sd3(sd3_dir / "medium.safetensors", CPU, torch.float32), "a cat", 1, steps=3).astype(
        int
    )
    assert np.abs(half - full).mean() < 3  # the same picture, give or take rounding


@pytest.mark.parametrize("stored", ["medium-fp8", "medium-scaled"])
def test_fp8_t5_is_dequantized_to_the_compute_dtype(sd3_dir: Path, stored: str) -> None:
    reference = load_sd3(sd3_dir / "medium.safetensors", CPU, torch.float32).t5.state_dict()
    components = load_sd3(sd3_dir / f"{stored}.safetensors", CPU, torch.float32)
    weights = components.t5.state_dict()
    assert all(value.dtype == torch.float32 for value in weights.values())
    q = "encoder.block.1.layer.0.SelfAttention.q.weight"
    # e4m3 keeps 3 mantissa bits: each weight within 1/16 of its size (plus the subnormal step).
    assert torch.allclose(weights[q], reference[q], rtol=1 / 16, atol=2e-3)
    assert not torch.equal(weights[q], reference[q])
    assert torch.equal(weights["shared.weight"], reference["shared.weight"])  # fp8 files keep it in fp16


# --- text encoders from folders ----------------------------------------------------------------


def test_encoders_missing_from_the_file_come_from_a_comfyui_clip_folder(sd3_dir: Path, no_network) -> None:
    (sd3_dir / "models" / "text_encoders").mkdir(exist_ok=True)
    folders = encoder_folders([sd3_dir / "models", sd3_dir / "no-such-models"])
    assert folders == [sd3_dir / "models" / "clip", sd3_dir / "models" / "text_encoders"]
    bare = load_sd3(sd3_dir / "medium-bare.safetensors", CPU, torch.float32, encoder_folders=folders)
    assert bare.sources == {
        role: str(folders[0] / f"{name}.safetensors")
        for role, name in (("clip_l", "clip_l"), ("clip_g", "clip_g"), ("t5xxl", "t5xxl_fp16"))
    }
    full = load_sd3(sd3_dir / "medium.safetensors", CPU, torch.float32)
    # The folder's clip_l carries a projection, as OpenAI's does; SD 3 uses CLIP-L unprojected.
    assert "text_projection.weight" in load_file(str(folders[0] / "clip_l.safetensors"))
    assert torch.equal(bare.clip_l.text_projection.weight, torch.eye(16))
    # The folder's files hold the same tiny encoders as the full file: the same picture.
    assert np.array_equal(_ours(bare, "a red fox", 3), _ours(full, "a red fox", 3))
    assert no_network == []


def test_a_missing_clip_is_named_with_where_it_was_looked_for(sd3_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "text_encoder"
    folder.mkdir()
    for name in ("clip_l", "t5xxl_fp16"):
        (folder / f"{name}.safetensors").write_bytes(
            (sd3_dir / "models" / "clip" / f"{name}.safetensors").read_bytes()
        )
    # A file holding CLIP-L but not CLIP-G: the CLIP-G width is known, and named.
    tensors = load_file(str(sd3_dir / "medium.safetensors"))
    without_g = {key: value for key, value in tensors.items() if not key.startswith("text_encoders.clip_g.")}
    save_file(without_g, str(tmp_path / "no-clip-g.safetensors"))
    with pytest.raises(CheckpointError, match=r"needs its CLIP-G text encoder \(32 wide\).*" + str(folder)):
        load_sd3(tmp_path / "no-clip-g.safetensors", CPU, torch.float32, encoder_folders=[folder])
    # Neither CLIP in the file, one CLIP file in the folder: both named, with what is there.
    with pytest.raises(
        CheckpointError, match=r"CLIP-L and CLIP-G text encoders \(together 48 wide\).*16 wide"
    ):
        load_sd3(sd3_dir / "medium-bare.safetensors", CPU, torch.float32, encoder_folders=[folder])


def test_without_t5_it_generates_with_clip_only_as_diffusers_does(sd3_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "clip"
    folder.mkdir()
    for name in ("clip_l", "clip_g"):
        (folder / f"{name}.safetensors").write_bytes(
            (sd3_dir / "models" / "clip" / f"{name}.safetensors").read_bytes()
        )
    components = load_sd3(sd3_dir / "medium-bare.safetensors", CPU, torch.float32, encoder_folders=[folder])
    assert components.t5 is None and "t5xxl" not in components.sources
    assert any("CLIP only" in note for note in components.notes)
    conditioning = encode_prompts(components, ["a cat"])
    assert conditioning.embeds.shape == (1, 77 + 256, 64) and not conditioning.embeds[:, 77:].any()
    assert np.array_equal(_ours(components, "a cat", 5), _diffusers_txt2img(components, "a cat", 5, 4, 5.0))

    skipped = load_sd3(sd3_dir / "medium.safetensors", CPU, torch.float32, use_t5=False)
    assert skipped.t5 is None and skipped.notes == []


@pytest.mark.parametrize("with_t5", [True, False])
def test_a_diffusers_folder_gives_the_single_files_picture(
    sd3_dir: Path, tmp_path: Path, with_t5: bool
) -> None:
    components = load_sd3(sd3_dir / "medium.safetensors", CPU, torch.float32, use_t5=with_t5)
    StableDiffusion3Pipeline(
        transformer=components.transformer,
        scheduler=components.make_scheduler(),
        vae=components.vae,
        text_encoder=components.clip_l,
        tokenizer=components.tokenizer_l,
        text_encoder_2=components.clip_g,
        tokenizer_2=components.tokenizer_g,
        text_encoder_3=components.t5,
        tokenizer_3=components.tokenizer_t5,
    ).save_pretrained(tmp_path / "sd35m")
    assert is_sd3_folder(tmp_path / "sd35m") and not is_sd3_folder(sd3_dir)
    folder = load_sd3_folder(tmp_path / "sd35m", CPU, torch.float32)
    assert folder.spec.variant == SD35_MEDIUM and (folder.t5 is not None) == with_t5
    assert folder.spec.transformer_config["dual_attention_layers"] == (0, 1)
    assert np.array_equal(_ours(folder, "a kite", 4), _ours(components, "a kite", 4))


# --- the loop against diffusers -----------------------------------------------------------------


@pytest.mark.parametrize(("file", "steps"), [("medium", 5), ("large", 2)])
def test_txt2img_is_pixel_identical_to_diffusers_pipeline(sd3_dir: Path, file: str, steps: int) -> None:
    components = load_sd3(sd3_dir / f"{file}.safetensors", CPU, torch.float32)
    ours = _ours(components, "a lighthouse at dusk", seed=11, steps=steps, cfg=4.5)
    assert np.array_equal(ours, _diffusers_txt2img(components, "a lighthouse at dusk", 11, steps, 4.5))
    assert ours.std() > 1  # a picture, not a flat field
    assert not np.array_equal(ours, _ours(components, "a lighthouse at dusk", seed=12, steps=steps, cfg=4.5))


def test_skip_layer_guidance_is_pixel_identical_to_diffusers(sd3_dir: Path) -> None:
    components = load_sd3(sd3_dir / "medium.safetensors", CPU, torch.float32)
    guidance = SkipLayerGuidance(layers=(1, 2), scale=2.8, start=0.0, stop=0.8)
    generator = torch.Generator("cpu").manual_seed(3)
    ours = txt2img(
        components,
        ["a cat"],
        width=64,
        height=64,
        steps=5,
        guidance_scale=4.0,
        generator=generator,
        skip_layers=guidance,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=components.transformer,
        scheduler=components.make_scheduler(),
        vae=components.vae,
        text_encoder=components.clip_l,
        tokenizer=components.tokenizer_l,
        text_encoder_2=components.clip_g,
        tokenizer_2=components.tokenizer_g,
        text_encoder_3=components.t5,
        tokenizer_3=components.tokenizer_t5,
    )
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        "a cat",
        height=64,
        width=64,
        num_inference_steps=5,
        guidance_scale=4.0,
        generator=torch.Generator("cpu").manual_seed(3),
        skip_guidance_layers=[1, 2],
        skip_layer_guidance_scale=2.8,
        skip_layer_guidance_start=0.0,
        skip_layer_guidance_stop=0.8,
    ).images
    assert np.array_equal(_pixels(ours), _pixels(expected))
    assert not np.array_equal(_pixels(ours), _ours(components, "a cat", 3, steps=5, cfg=4.0))
    with pytest.raises(ValueError, match=r"among 0\.\.3 of this model \(got \[9\]\)"):
        txt2img(
            components,
            ["x"],
            width=64,
            height=64,
            generator=generator,
            skip_layers=SkipLayerGuidance(layers=(9,)),
        )


@pytest.mark.parametrize("sampler", ["Euler", "Heun"])
def test_img2img_is_pixel_identical_to_diffusers_img2img_pipeline(sd3_dir: Path, sampler: str) -> None:
    components = load_sd3(sd3_dir / "medium.safetensors", CPU, torch.float32)
    init = txt2img(
        components, ["a cat"], width=64, height=64, steps=3, generator=torch.Generator("cpu").manual_seed(1)
    )
    ours = img2img(
        components,
        ["a dog"],
        init,
        strength=0.6,
        steps=5,
        guidance_scale=4.0,
        generator=torch.Generator("cpu").manual_seed(2),
        sampler=sampler,
    )
    pipe = StableDiffusion3Img2ImgPipeline(
        transformer=components.transformer,
        scheduler=make_flow_scheduler(components.spec.scheduler_config, sampler),
        vae=components.vae,
        text_encoder=components.clip_l,
        tokenizer=components.tokenizer_l,
        text_encoder_2=components.clip_g,
        tokenizer_2=components.tokenizer_g,
        text_encoder_3=components.t5,
        tokenizer_3=components.tokenizer_t5,
    )
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        "a dog",
        image=init[0],
        strength=0.6,
        height=64,
        width=64,
        num_inference_steps=5,
        guidance_scale=4.0,
        generator=torch.Generator("cpu").manual_seed(2),
    ).images
    assert np.array_equal(_pixels(ours), _pixels(expected))
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\], got 0"):
        img2img(components, ["a dog"], init, strength=0, steps=5, generator=torch.Generator("cpu"))


def _left_half_mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    return mask


def test_inpainting_matches_diffusers_sd3_inpaint_pipeline(sd3_dir: Path) -> None:
    """Compared on the latents: diffusers' SD 3 inpainting decodes without the VAE's shift factor."""
    components = load_sd3(sd3_dir / "medium.safetensors", CPU, torch.float32)
    init = txt2img(
        components, ["a cat"], width=64, height=64, steps=3, generator=torch.Generator("cpu").manual_seed(1)
    )
    mask = _left_half_mask()
    generator = torch.Generator("cpu").manual_seed(2)
    with torch.inference_mode():
        clean = image_to_latents(components.vae, init, generator)
        ours = sample(
            components,
            encode_prompts(components, ["a dog"]),
            encode_prompts(components, [""]),
            width=64,
            height=64,
            steps=4,
            guidance_scale=4.0,
            generator=generator,
            strength=0.8,
            init_latents=clean,
            mask=latent_mask(mask, clean),
        )
    pipe = StableDiffusion3InpaintPipeline(
        transformer=components.transformer,
        scheduler=make_flow_scheduler(components.spec.scheduler_config),
        vae=components.vae,
        text_encoder=components.clip_l,
        tokenizer=components.tokenizer_l,
        text_encoder_2=components.clip_g,
        tokenizer_2=components.tokenizer_g,
        text_encoder_3=components.t5,
        tokenizer_3=components.tokenizer_t5,
    )
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        "a dog",
        image=init[0],
        mask_image=mask,
        strength=0.8,
        height=64,
        width=64,
        num_inference_steps=4,
        guidance_scale=4.0,
        generator=torch.Generator("cpu").manual_seed(2),
        output_type="latent",
    ).images
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("content", list(MaskedContent))
def test_inpainting_keeps_the_unmasked_latents_and_changes_the_masked_ones(
    sd3_dir: Path, content: MaskedContent
) -> None:
    components = load_sd3(sd3_dir / "medium.safetensors", CPU, torch.float32)
    generator = torch.Generator("cpu").manual_seed(3)
    clean = torch.randn((1, 16, 8, 8), generator=generator)
    mask = latent_mask(_left_half_mask(), clean)
    with torch.inference_mode():
        positive = encode_prompts(components, ["a dog"])
        latents = sample(
            components,
            positive,
            None,
            width=64,
            height=64,
            steps=3,
            guidance_scale=1.0,
            generator=generator,
            strength=0.9,
            init_latents=clean,
            mask=mask,
            masked_content=content,
        )
    assert torch.equal(latents[..., 4:], clean[..., 4:])
    assert (latents[..., :4] - clean[..., :4]).abs().mean() > 0.1


def test_guidance_off_runs_one_pass_per_step(sd3_dir: Path) -> None:
    components = load_sd3(sd3_dir / "medium.safetensors", CPU, torch.float32)
    batches = []
    original = components.transformer.forward

    def counting(*args, **kwargs):
        batches.append(kwargs["hidden_states"].shape[0])
        return original(*args, **kwargs)

    components.transformer.forward = counting
    ours = _ours(components, "a boat", seed=2, steps=3, cfg=1.0)
    assert batches == [1, 1, 1]
    assert np.array_equal(ours, _diffusers_txt2img(components, "a boat", 2, 3, 1.0))


@pytest.mark.parametrize("sampler", ["Heun", "DPM++ 2M", "UniPC"])
def test_the_other_flow_samplers_draw_near_eulers_picture(sd3_dir: Path, sampler: str) -> None:
    components = load_sd3(sd3_dir / "medium.safetensors", CPU, torch.float32)
    seen = []
    images = txt2img(
        components,
        ["a cat"],
        width=64,
        height=64,
        steps=6,
        guidance_scale=4.0,
        generator=torch.Generator("cpu").manual_seed(1),
        sampler=sampler,
        step_hook=lambda info: seen.append((info.step, info.total)),
    )
    euler = _pixels(
        txt2img(
            components,
            ["a cat"],
            width=64,
            height=64,
            steps=6,
            guidance_scale=4.0,
            generator=torch.Generator("cpu").manual_seed(1),
        )
    )
    difference = np.abs(_pixels(images).astype(int) - euler.astype(int))
    assert 0 < difference.mean() < 20  # another integrator of the same flow, not another picture
    assert seen[-1][0] == seen[-1][1] == len(seen)


def test_bad_sampler_and_size_are_refused_by_name(sd3_dir: Path) -> None:
    components = load_sd3(
        sd3_dir / "medium-bare.safetensors",
        CPU,
        torch.float32,
        encoder_folders=[sd3_dir / "models" / "clip"],
        use_t5=False,
    )
    generator = torch.Generator("cpu").manual_seed(0)
    with pytest.raises(
        ValueError, match=r"'Euler a' does not fit flow matching.*Euler, Heun, DPM\+\+ 2M, UniPC"
    ):
        txt2img(components, ["x"], width=64, height=64, generator=generator, sampler="Euler a")
    with pytest.raises(ValueError, match="multiples of 16"):
        txt2img(components, ["x"], width=72, height=64, generator=generator)
    with pytest.raises(ValueError, match="at most 256 px"):
        txt2img(components, ["x"], width=512, height=64, generator=generator)


# --- the tiny checkpoint tool -------------------------------------------------------------------


def test_tiny_tool_writes_stability_layout_files(tmp_path: Path, capsys) -> None:
    tiny_checkpoint.main(["--arch", "sd35-large", "--no-text-encoders", str(tmp_path / "a.safetensors")])
    tiny_checkpoint.main(["--arch", "sd35-large", "--no-text-encoders", str(tmp_path / "b.safetensors")])
    assert "sd35-large" in capsys.readouterr().out
    first, second = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert not any(key.startswith("text_encoders.") for key in first)
    assert "model.diffusion_model.joint_blocks.37.x_block.mlp.fc1.weight" in first
    assert (tmp_path / "a.safetensors").stat().st_size < 5_000_000
    with pytest.raises(SystemExit):
        tiny_checkpoint.main(["--arch", "sd15", "--no-text-encoders", str(tmp_path / "c.safetensors")])


def test_the_model_cache_counts_and_moves_every_sd3_part(sd3_dir: Path) -> None:
    model = load_model(sd3_dir / "medium.safetensors", CPU, torch.float32)
    parts = model.parts
    assert parts is not None and parts.t5 is not None
    modules = [parts.transformer, parts.vae, parts.clip_l, parts.clip_g, parts.t5]
    expected = sum(t.numel() * t.element_size() for m in modules for t in module_tensors(m))
    assert model_bytes(model) == expected  # T5 included: it is most of a real file's size
    # medvram's hooks run the model on the accelerator: the parts the flow loop reads say so too.
    accelerator = torch.device("meta")  # any device: attaching moves no weights, the hooks do
    offloader = attach_offload(model, MemoryMode.MEDVRAM, accelerator)
    assert model.device == model.parts.device == accelerator
    assert model.parts.transformer is model.unet and model.parts.t5 is model.text_encoders[2]
    offloader.detach()
    assert model.device == model.parts.device == CPU
    assert move_model(model, CPU) == 0 and model.parts.device == CPU


def test_text_offload_keeps_the_transformer_on_the_device_and_one_encoder_at_a_time(sd3_dir: Path) -> None:
    """Which parts the hooks hold on the device, step by step (the CUDA tests move real weights)."""
    model = load_model(sd3_dir / "medium.safetensors", CPU, torch.float32)
    parts = model.parts
    assert parts is not None and parts.t5 is not None
    offloader = attach_offload(model, MemoryMode.TEXT_OFFLOAD, CPU)
    assert offloader.resident is not None and offloader.resident.on_device
    visiting = dict(zip(("clip_l", "clip_g", "t5"), offloader.groups, strict=True))

    def on_device() -> set[str]:
        return {name for name, group in visiting.items() if group.on_device}

    ids = torch.ones(1, 8, dtype=torch.long)
    assert on_device() == set()
    parts.t5(ids)
    assert on_device() == {"t5"}
    parts.clip_l(ids)
    assert on_device() == {"clip_l"}  # one encoder at a time
    latents = torch.zeros(1, 16, 8, 8)
    context = torch.zeros(1, 4, parts.transformer.config.joint_attention_dim)
    pooled = torch.zeros(1, parts.transformer.config.pooled_projection_dim)
    parts.transformer(latents, context, pooled, torch.ones(1))
    assert on_device() == set() and offloader.resident.on_device  # denoising: the encoders are back
    parts.clip_g(ids)
    offloader.park()  # between jobs: the encoders go back, the transformer stays
    assert on_device() == set() and offloader.resident.on_device
    offloader.detach()
    assert offloader.resident is None and model.device == parts.device == CPU
    assert not any(module._forward_pre_hooks for module in (parts.transformer, parts.t5, parts.clip_l))


def test_weighted_prompts_lay_out_tokens_as_the_tokenizers_do(sd3_dir: Path) -> None:
    parts = load_model(sd3_dir / "medium.safetensors", CPU, torch.float32).parts
    assert parts is not None and parts.tokenizer_t5 is not None
    text = "a lighthouse, at dusk " * 40  # longer than both windows: cut as the tokenizers cut
    cases = [(parts.tokenizer_l, 77, True), (parts.tokenizer_g, 77, True), (parts.tokenizer_t5, 256, False)]
    for tokenizer, length, begin in cases:
        for pieces in ([("a red circle", 1.0)], [(text, 1.0)]):
            ids, weights = token_weights(tokenizer, pieces, length, begin=begin)
            expected = tokenizer(
                pieces[0][0], padding="max_length", max_length=length, truncation=True, return_tensors="pt"
            ).input_ids
            assert torch.equal(ids, expected) and weights == [1.0] * length


def test_a_weight_scales_its_words_hidden_states_in_every_encoder(sd3_dir: Path) -> None:
    parts = load_model(sd3_dir / "medium.safetensors", CPU, torch.float32).parts
    assert parts is not None and parts.tokenizer_t5 is not None
    plain = encode_prompts(parts, ["a red circle"]).embeds[0]
    weighted = encode_weighted(parts, "a (red:1.5) circle").embeds[0]
    assert torch.equal(encode_weighted(parts, "a (red:1.0) circle").embeds[0], plain)
    red_in_clip = 2  # <start> a red circle <end>
    red_in_t5 = 77 + len(parts.tokenizer_t5("a", add_special_tokens=False).input_ids)
    width_l, width_g = parts.clip_l.config.hidden_size, parts.clip_g.config.hidden_size
    encoders = {
        "clip_l": (red_in_clip, 1, slice(0, width_l)),
        "clip_g": (red_in_clip, 1, slice(width_l, width_l + width_g)),
        "t5": (red_in_t5, red_in_t5 + 3, slice(None)),
    }
    for name, (red, other, columns) in encoders.items():
        # Each encoder's mean is restored afterwards: every row changes by one factor, the
        # weighted word's by 1.5 times it.
        factor = weighted[other, columns].norm() / plain[other, columns].norm()
        ratio = weighted[red, columns].norm() / plain[red, columns].norm()
        assert torch.allclose(ratio, 1.5 * factor, rtol=1e-4), name


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("lora_te3_encoder_block_0_layer_0_SelfAttention_q", "T5 layers are not patched"),
        ("lora_unet_joint_blocks_9_x_block_attn_qkv", "no such layer in an SD 3.5 model of 4 blocks"),
        ("lora_unet_joint_blocks_0_x_block_attn_ln_q", "no such layer"),
    ],
)
def test_kohya_sd3_keys_it_cannot_place_are_named(key: str, words: str) -> None:
    tensors = {
        "lora_unet_joint_blocks_0_x_block_mlp_fc1.lora_down.weight": torch.zeros(2, 8),
        "lora_unet_joint_blocks_0_x_block_mlp_fc1.lora_up.weight": torch.zeros(8, 2),
        f"{key}.lora_down.weight": torch.zeros(2, 8),
        f"{key}.lora_up.weight": torch.zeros(8, 2),
    }
    with pytest.raises(KohyaLoraError, match=words) as refused:
        kohya_sd3_to_diffusers(tensors, depth=4)
    assert key in str(refused.value)

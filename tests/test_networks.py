"""LoRA tags and textual-inversion embeddings: parsing, effect, exact restore, wrong-arch refusal."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from webui.engine.conditioning import encode_prompts
from webui.engine.extra_networks import LoraTag, parse_lora_tags
from webui.engine.generate import Engine, GenerationResult
from webui.engine.request import GenerationError, GenerationRequest
from webui.engine.steps import StepInfo
from webui.model_manager import lora as lora_module
from webui.model_manager.detect import Arch
from webui.model_manager.embeddings import EmbeddingError, apply_embeddings, read_embedding
from webui.model_manager.load import LoadedModel, load_model
from webui.model_manager.lora import (
    LoraError,
    activate_loras,
    detect_lora_arch,
    lora_arch_from_shapes,
    lora_state,
)
from webui.model_manager.state_dict import CheckpointError
from webui.tools.tiny_networks import ALPHA_FRACTION, write_tiny_embedding, write_tiny_lora

CPU = torch.device("cpu")


class _Payload:
    """Any class instance: unpickling it means importing code, which weights-only loading refuses."""


@pytest.fixture(scope="module")
def networks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("networks")
    for arch in ("sd15", "sd2", "sdxl"):
        write_tiny_lora(arch, folder / f"lora-{arch}.safetensors")
    write_tiny_lora("sd15", folder / "lora-sd15-b.safetensors", seed=1)
    write_tiny_embedding("sd15", folder / "emb-sd15.pt", vectors=3)
    write_tiny_embedding("sd2", folder / "emb-sd2.safetensors", vectors=1)
    write_tiny_embedding("sdxl", folder / "emb-sdxl.safetensors", vectors=2)
    return folder


@pytest.fixture
def fresh_model(tiny_dir: Path):
    """A model of its own per test: LoRA and embedding state never leaks into other tests."""

    def get(arch: str) -> LoadedModel:
        return load_model(tiny_dir / f"tiny-{arch}.safetensors", CPU, torch.float32)

    return get


def _request(prompt: str = "a red fox", **fields) -> GenerationRequest:
    base = {"negative_prompt": "blurry", "steps": 3, "width": 64, "height": 64, "seed": 5}
    return GenerationRequest(prompt=prompt, **(base | fields))


def _run(engine: Engine, prompt: str, **fields) -> tuple[GenerationResult, torch.Tensor]:
    """The result and the final latents, which compare more strictly than 8-bit pixels."""
    steps: list[StepInfo] = []
    result = engine.generate(_request(prompt, **fields), on_step=steps.append)
    return result, steps[-1].latents.clone()


def _pixels(result: GenerationResult) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


# --- prompt tags ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "cleaned", "tags"),
    [
        ("a cat, <lora:ink:0.7>, sunny", "a cat, sunny", [LoraTag("ink", 0.7, 0.7)]),
        ("<lora:ink>, a cat", "a cat", [LoraTag("ink")]),
        ("a <lora:my style:0.5:0.25> b", "a b", [LoraTag("my style", 0.5, 0.25)]),
        ("x <LORA:a:-1> <lora:b:2>", "x", [LoraTag("a", -1.0, -1.0), LoraTag("b", 2.0, 2.0)]),
        ("a <lora:bad:strong> cat", "a cat", []),
        ("<hypernet:h:1> keeps  its spacing,", "<hypernet:h:1> keeps  its spacing,", []),
    ],
)
def test_lora_tags_are_parsed_and_removed(prompt: str, cleaned: str, tags: list[LoraTag]) -> None:
    assert parse_lora_tags(prompt) == (cleaned, tags)


# --- LoRA -------------------------------------------------------------------------------------


def test_lora_changes_the_image_weights_switch_without_reload_and_removal_restores_exactly(
    fresh_model, networks: Path
) -> None:
    model = fresh_model("sd15")
    engine = Engine(model, loras={"ink": networks / "lora-sd15.safetensors"})
    plain, plain_latents = _run(engine, "a red fox")
    full, full_latents = _run(engine, "a red fox <lora:ink:1>")
    half, half_latents = _run(engine, "a red fox <lora:ink:0.5>")
    again, again_latents = _run(engine, "a red fox")

    assert not torch.equal(full_latents, plain_latents)
    assert np.abs(_pixels(full) - _pixels(plain)).mean() > 1
    assert not torch.equal(half_latents, full_latents)
    assert not torch.equal(half_latents, plain_latents)
    assert torch.equal(again_latents, plain_latents)
    assert np.array_equal(_pixels(again), _pixels(plain))
    assert (full.loras, half.loras, again.loras) == ([("ink", 1.0)], [("ink", 0.5)], [])
    state = lora_state(model)
    assert state is not None and state.files_read == 1 and list(state.loaded) == ["ink"]


def test_lora_scale_is_weight_times_alpha_over_rank(fresh_model, networks: Path) -> None:
    model = fresh_model("sd15")
    path = networks / "lora-sd15.safetensors"
    activate_loras(model, [("ink", path, 0.5)])
    layer = model.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q")
    prefix = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_q"
    raw = load_file(str(path))
    down, up = raw[f"{prefix}.lora_down.weight"].float(), raw[f"{prefix}.lora_up.weight"].float()
    assert float(raw[f"{prefix}.alpha"]) / down.shape[0] == ALPHA_FRACTION
    x = torch.randn(2, layer.in_features)
    with torch.no_grad():
        delta = layer(x) - layer.base_layer(x)
    expected = x @ (up @ down).T * ALPHA_FRACTION * 0.5
    torch.testing.assert_close(delta, expected, rtol=2e-3, atol=2e-3)


def test_two_loras_at_once(fresh_model, networks: Path) -> None:
    model = fresh_model("sd15")
    loras = {"a": networks / "lora-sd15.safetensors", "b": networks / "lora-sd15-b.safetensors"}
    engine = Engine(model, loras=loras)
    _, plain = _run(engine, "a red fox")
    _, only_a = _run(engine, "a red fox <lora:a:0.8>")
    _, only_b = _run(engine, "a red fox <lora:b:0.8>")
    both, both_latents = _run(engine, "a red fox <lora:a:0.8> <lora:b:0.8>")
    _, again = _run(engine, "a red fox")
    assert both.loras == [("a", 0.8), ("b", 0.8)]
    for single in (plain, only_a, only_b):
        assert not torch.equal(both_latents, single)
    assert torch.equal(again, plain)
    state = lora_state(model)
    assert state is not None and state.files_read == 2


def test_tags_in_the_negative_prompt_apply_too(fresh_model, networks: Path) -> None:
    engine = Engine(fresh_model("sd15"), loras={"ink": networks / "lora-sd15.safetensors"})
    _, plain = _run(engine, "a red fox")
    result, tagged = _run(engine, "a red fox", negative_prompt="blurry <lora:ink:1>")
    assert result.loras == [("ink", 1.0)]
    assert not torch.equal(plain, tagged)


@pytest.mark.parametrize(
    ("model_arch", "lora_arch", "message"),
    [
        ("sd15", "sdxl", "LoRA 'other' is for SDXL, the current model is SD 1.x"),
        ("sdxl", "sd15", "LoRA 'other' is for SD 1.x, the current model is SDXL"),
        ("sd2", "sd15", "LoRA 'other' is for SD 1.x, the current model is SD 2.x"),
    ],
)
def test_lora_for_another_arch_is_refused_and_the_model_still_works(
    fresh_model, networks: Path, model_arch: str, lora_arch: str, message: str
) -> None:
    model = fresh_model(model_arch)
    loras = {"mine": networks / f"lora-{model_arch}.safetensors"}
    loras["other"] = networks / f"lora-{lora_arch}.safetensors"
    engine = Engine(model, loras=loras)
    _, plain = _run(engine, "a red fox")
    _run(engine, "a red fox <lora:mine:1>")
    with pytest.raises(GenerationError, match=message) as caught:
        engine.generate(_request("a red fox <lora:mine:1> <lora:other:1>"))
    assert isinstance(caught.value.__cause__, LoraError)
    # The refused file left nothing behind, and the previous job's LoRA is off.
    assert list(lora_state(model).loaded) == ["mine"]  # type: ignore[union-attr]
    assert not any(getattr(m, "disable_adapters", True) is False for m in model.unet.modules())
    _, after = _run(engine, "a red fox")
    assert torch.equal(after, plain)


def test_lora_whose_widths_do_not_fit_is_refused(fresh_model, tmp_path: Path) -> None:
    # Real SD1 widths (768-wide context): its names say SD 1.x, the tiny SD1 model is narrower.
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    path = tmp_path / "real-sd1.safetensors"
    save_file(
        {
            f"{name}.lora_down.weight": torch.zeros(4, 768),
            f"{name}.lora_up.weight": torch.zeros(32, 4),
            f"{name}.alpha": torch.tensor(4.0),
        },
        str(path),
    )
    assert detect_lora_arch(path) is Arch.SD1
    model = fresh_model("sd15")
    with pytest.raises(LoraError, match=r"does not fit .*takes 32 inputs, the LoRA gives it 768.*SD 1\.x"):
        activate_loras(model, [("real", path, 1.0)])
    assert not getattr(model.unet, "peft_config", {})


def test_unknown_lora_name_is_refused(fresh_model) -> None:
    engine = Engine(fresh_model("sd15"), loras={})
    with pytest.raises(GenerationError, match="unknown LoRA 'nowhere'"):
        engine.generate(_request("a fox <lora:nowhere:1>"))


def test_an_edited_lora_file_is_read_again(fresh_model, networks: Path, tmp_path: Path) -> None:
    model = fresh_model("sd15")
    path = write_tiny_lora("sd15", tmp_path / "ink.safetensors", seed=3)
    activate_loras(model, [("ink", path, 1.0)])
    activate_loras(model, [("ink", path, 0.3)])
    write_tiny_lora("sd15", path, seed=4, rank=2)
    activate_loras(model, [("ink", path, 1.0)])
    state = lora_state(model)
    assert state is not None and state.files_read == 2 and list(state.loaded) == ["ink"]
    activate_loras(model, [])


def test_idle_loras_beyond_the_limit_are_unloaded(
    fresh_model, networks: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lora_module, "MAX_IDLE_ADAPTERS", 1)
    model = fresh_model("sd15")
    write_tiny_lora("sd15", networks / "lora-sd15-c.safetensors", seed=2)
    files = {"a": "lora-sd15.safetensors", "b": "lora-sd15-b.safetensors", "c": "lora-sd15-c.safetensors"}
    engine = Engine(model, loras={name: networks / file for name, file in files.items()})
    _, plain = _run(engine, "a red fox")
    for name in "abc":
        _run(engine, f"a red fox <lora:{name}:1>")
    _, after = _run(engine, "a red fox")
    assert sorted(lora_state(model).loaded) == ["c"]  # type: ignore[union-attr]
    assert torch.equal(after, plain)
    assert len(model.unet.peft_config) == 1


def test_diffusers_format_lora_works_like_its_kohya_original(
    fresh_model, networks: Path, tmp_path: Path
) -> None:
    kohya = networks / "lora-sd15.safetensors"
    original = fresh_model("sd15")
    activate_loras(original, [("ink", kohya, 1.0)])
    adapter = next(iter(original.unet.peft_config))
    peft_file = tmp_path / "peft-format.safetensors"
    weights = {
        f"unet.{k}": v for k, v in get_peft_model_state_dict(original.unet, adapter_name=adapter).items()
    }
    te = get_peft_model_state_dict(original.text_encoders[0], adapter_name=adapter)
    save_file(weights | {f"text_encoder.{k}": v for k, v in te.items()}, str(peft_file))
    assert detect_lora_arch(peft_file) is Arch.SD1

    converted = fresh_model("sd15")
    _, from_kohya = _run(Engine(original, loras={"ink": kohya}), "a fox <lora:ink:0.7>")
    _, from_peft = _run(Engine(converted, loras={"ink": peft_file}), "a fox <lora:ink:0.7>")
    torch.testing.assert_close(from_peft, from_kohya, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("arch", "expected"), [("sd15", Arch.SD1), ("sd2", Arch.SD2), ("sdxl", Arch.SDXL)])
def test_detect_lora_arch_of_tiny_files(networks: Path, arch: str, expected: Arch) -> None:
    assert detect_lora_arch(networks / f"lora-{arch}.safetensors") is expected


@pytest.mark.parametrize(
    ("shapes", "expected"),
    [
        (
            {
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (
                    8,
                    768,
                )
            },
            "sd1",
        ),
        (
            {
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (
                    8,
                    1024,
                )
            },
            "sd2",
        ),
        ({"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (8, 2048)}, "sdxl"),
        (
            {"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (8, 2048)},
            "sdxl",
        ),
        ({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (8, 1024)}, "sd2"),
        ({"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (8, 1280)}, "sdxl"),
        ({"lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2.lora_down.weight": (8, 40)}, None),
    ],
)
def test_lora_arch_from_real_widths(shapes: dict, expected: str | None) -> None:
    found = lora_arch_from_shapes(shapes)
    assert (found.value if found else None) == expected


def test_corrupt_or_foreign_lora_files_are_refused(fresh_model, tiny_dir: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "broken.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="broken.safetensors"):
        detect_lora_arch(corrupt)
    model = fresh_model("sd15")
    with pytest.raises(CheckpointError, match="broken.safetensors"):
        activate_loras(model, [("broken", corrupt, 1.0)])
    with pytest.raises(LoraError, match="not a LoRA"):
        detect_lora_arch(tiny_dir / "tiny-sd15.safetensors")


# --- embeddings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "file", "vectors"),
    [("sd15", "emb-sd15.pt", 3), ("sd2", "emb-sd2.safetensors", 1), ("sdxl", "emb-sdxl.safetensors", 2)],
)
def test_embedding_tokens_change_the_conditioning(
    fresh_model, networks: Path, arch: str, file: str, vectors: int
) -> None:
    model = fresh_model(arch)
    path = networks / file
    name = path.stem
    before = encode_prompts(model, ["a photo of a cat"]).embeds
    prompts, used = apply_embeddings(model, [f"a photo of {name.upper()}, a cat", "a cat"], {name: path})
    assert used == [name] and prompts[1] == "a cat"
    placeholders = prompts[0].split("of ")[1].split(",")[0].split()
    assert len(placeholders) == vectors

    embedding = read_embedding(path)
    for tokenizer, encoder, table in zip(model.tokenizers, model.text_encoders, embedding.tables):
        ids = tokenizer.convert_tokens_to_ids(placeholders)
        assert torch.equal(encoder.get_input_embeddings().weight[ids], table)

    with_name = encode_prompts(model, [prompts[0]]).embeds
    without = encode_prompts(model, ["a photo of a cat"]).embeds
    assert torch.equal(before, without)  # installing it changed nothing else
    width = model.text_encoders[0].get_input_embeddings().embedding_dim
    parts = [(0, width), (width, with_name.shape[-1])] if arch == "sdxl" else [(0, width)]
    for start, stop in parts:  # SDXL: each encoder's half reflects its own table
        assert not torch.equal(with_name[..., start:stop], without[..., start:stop])
    again, _ = apply_embeddings(model, [f"{name} again"], {name: path})
    assert again[0] == " ".join(placeholders) + " again"
    assert len(model.tokenizers[0]) == 49408 + vectors  # installed once


def test_engine_uses_embeddings_from_both_prompts(fresh_model, networks: Path) -> None:
    path = networks / "emb-sd15.pt"
    engine = Engine(fresh_model("sd15"), embeddings={"emb-sd15": path, "unused": path})
    plain, plain_latents = _run(engine, "a red fox")
    result, latents = _run(engine, "a red fox", negative_prompt="emb-sd15")
    assert result.embeddings == ["emb-sd15"]
    assert plain.embeddings == []
    assert not torch.equal(latents, plain_latents)
    _, again = _run(engine, "a red fox")
    assert torch.equal(again, plain_latents)


def test_embedding_names_match_whole_words_only(fresh_model, networks: Path) -> None:
    model = fresh_model("sd15")
    available = {"emb-sd15": networks / "emb-sd15.pt"}
    prompts, used = apply_embeddings(model, ["xemb-sd15 emb-sd15x emb-sd15_2"], available)
    assert prompts == ["xemb-sd15 emb-sd15x emb-sd15_2"] and used == []
    prompts, used = apply_embeddings(model, ["(Emb-SD15:1.2)"], available)
    assert used == ["emb-sd15"] and "<ti-" in prompts[0]


@pytest.mark.parametrize(
    ("model_arch", "file", "message"),
    [
        ("sd15", "emb-sdxl.safetensors", "embedding 'emb-sdxl' is for SDXL, the current model is SD 1.x"),
        ("sdxl", "emb-sd15.pt", "embedding 'emb-sd15' is for an unknown model .*the current model is SDXL"),
    ],
)
def test_embedding_for_another_arch_is_refused(
    fresh_model, networks: Path, model_arch: str, file: str, message: str
) -> None:
    model = fresh_model(model_arch)
    name = Path(file).stem
    engine = Engine(model, embeddings={name: networks / file})
    with pytest.raises(GenerationError, match=message) as caught:
        engine.generate(_request(f"a {name} fox"))
    assert isinstance(caught.value.__cause__, EmbeddingError)
    assert len(model.tokenizers[0]) == 49408


def test_embedding_with_real_widths_names_both_architectures(fresh_model, tmp_path: Path) -> None:
    path = tmp_path / "real-sd2.safetensors"
    save_file({"emb_params": torch.zeros(2, 1024)}, str(path))
    assert read_embedding(path).arch is Arch.SD2
    with pytest.raises(
        EmbeddingError, match=r"'real-sd2' is for SD 2\.x, the current model is SD 1\.x.*1024"
    ):
        apply_embeddings(fresh_model("sd15"), ["real-sd2"], {"real-sd2": path})


def test_read_embedding_formats(tmp_path: Path) -> None:
    torch.save({"<cat-toy>": torch.ones(768)}, str(tmp_path / "diffusers.bin"))
    torch.save({"string_to_param": {"*": torch.ones(2, 1024)}, "name": "x"}, str(tmp_path / "a1111.pt"))
    save_file({"clip_l": torch.ones(4, 768), "clip_g": torch.ones(4, 1280)}, str(tmp_path / "xl.safetensors"))
    diffusers, a1111, xl = (
        read_embedding(tmp_path / name) for name in ("diffusers.bin", "a1111.pt", "xl.safetensors")
    )
    assert (diffusers.name, diffusers.vector_count, diffusers.arch) == ("diffusers", 1, Arch.SD1)
    assert (a1111.vector_count, a1111.widths, a1111.arch) == (2, (1024,), Arch.SD2)
    assert (xl.vector_count, xl.widths, xl.arch) == (4, (768, 1280), Arch.SDXL)


def test_corrupt_or_unsafe_embeddings_are_refused(tmp_path: Path) -> None:
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "cut.safetensors").write_bytes(b"\x00\x01")
    torch.save({"string_to_param": {"*": torch.ones(1, 8)}, "extra": _Payload()}, str(tmp_path / "code.pt"))
    save_file({"a": torch.ones(2), "b": torch.ones(2)}, str(tmp_path / "other.safetensors"))
    for name, message in [
        ("cut.pt", "cut.pt"),
        ("cut.safetensors", "cut.safetensors"),
        ("code.pt", "refused to load"),
        ("other.safetensors", "not an embedding layout"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            read_embedding(tmp_path / name)


def test_sdxl_pooled_embedding_ignores_added_tokens_with_a_legacy_eos_config(
    fresh_model, networks: Path
) -> None:
    model = fresh_model("sdxl")
    prompts, _ = apply_embeddings(model, ["emb-sdxl cat"], {"emb-sdxl": networks / "emb-sdxl.safetensors"})
    # Older diffusers folders say eos_token_id 2: transformers then pools at the largest token id.
    legacy_encoder = copy.deepcopy(model.text_encoders[1])
    legacy_encoder.config.eos_token_id = 2
    legacy_encoder.text_model.eos_token_id = 2
    legacy = dataclasses.replace(model, text_encoders=[model.text_encoders[0], legacy_encoder])
    assert torch.equal(encode_prompts(legacy, prompts).pooled, encode_prompts(model, prompts).pooled)

"""Checkpoint merger: exact formulas, inpainting channels, metadata, refusals and atomic writes."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import pytest
import torch
from safetensors.torch import safe_open, save_file

from webui.model_manager.detect import VAE_PREFIX, Arch
from webui.model_manager.load import load_model
from webui.model_manager.merge import INPUT_CONV_KEY, MergeMethod, MergeRecipe, merge_checkpoints
from webui.model_manager.state_dict import CheckpointError, read_state_dict
from webui.tools.merge import main as merge_main
from webui.tools.tiny_checkpoint import build_tiny_state_dict, write_tiny_checkpoint

from .conftest import CPU

# A few keys from each part, to compare against hand-computed values.
SAMPLE_KEYS = (
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
    "model.diffusion_model.out.2.bias",
    "first_stage_model.decoder.conv_in.weight",
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
)
WEIGHTED = MergeMethod.WEIGHTED_SUM
ADD_DIFF = MergeMethod.ADD_DIFFERENCE


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("merge-inputs")
    specs = {"a": ("sd15", 1), "b": ("sd15", 2), "c": ("sd15", 3), "inpaint": ("sd15-inpaint", 4)}
    specs["xl"] = ("sdxl", 5)
    return {
        role: write_tiny_checkpoint(arch, folder / f"{role}-{arch}.safetensors", seed)
        for role, (arch, seed) in specs.items()
    }


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(path).tensors


def metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata())


def recipe(a: Path, b: Path, c: Path | None = None, **options) -> MergeRecipe:
    options.setdefault("method", ADD_DIFF if c else WEIGHTED)
    options.setdefault("multiplier", 0.3)
    options.setdefault("name", "merged")
    return MergeRecipe(primary=a, secondary=b, tertiary=c, **options)


def test_weighted_sum_is_exact_in_float32(inputs, tmp_path: Path) -> None:
    out = merge_checkpoints(recipe(inputs["a"], inputs["b"], save_dtype="fp32"), tmp_path)
    assert out == tmp_path / "merged.safetensors"
    a, b, merged = tensors(inputs["a"]), tensors(inputs["b"]), tensors(out)
    assert merged.keys() == a.keys()
    for key in SAMPLE_KEYS:
        expected = a[key].float() * 0.7 + b[key].float() * 0.3
        assert merged[key].dtype is torch.float32
        assert torch.equal(merged[key], expected), key
        assert not torch.equal(merged[key], a[key].float())


@pytest.mark.parametrize(("multiplier", "same_as"), [(0.0, "a"), (1.0, "b")])
def test_weighted_sum_ends_give_the_inputs(inputs, tmp_path: Path, multiplier: float, same_as: str) -> None:
    out = merge_checkpoints(recipe(inputs["a"], inputs["b"], multiplier=multiplier), tmp_path)
    expected, merged = tensors(inputs[same_as]), tensors(out)
    assert all(merged[key].dtype is torch.float16 for key in merged)
    assert all(torch.equal(merged[key], expected[key]) for key in expected)


def test_add_difference_is_exact(inputs, tmp_path: Path) -> None:
    out = merge_checkpoints(
        recipe(inputs["a"], inputs["b"], inputs["c"], multiplier=1.5, save_dtype="fp32"), tmp_path
    )
    a, b, c, merged = (tensors(p) for p in (inputs["a"], inputs["b"], inputs["c"], out))
    for key in SAMPLE_KEYS:
        expected = a[key].float() + (b[key].float() - c[key].float()) * 1.5
        assert torch.equal(merged[key], expected), key


def test_keep_dtype_and_progress(inputs, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    out = merge_checkpoints(
        recipe(inputs["a"], inputs["b"], save_dtype="keep"),
        tmp_path,
        progress=lambda done, total: seen.append((done, total)),
    )
    merged = tensors(out)
    assert {value.dtype for value in merged.values()} == {torch.float16}
    assert seen[-1] == (len(merged), len(merged))


def test_merged_file_loads_as_the_same_architecture(inputs, tmp_path: Path) -> None:
    out = merge_checkpoints(recipe(inputs["a"], inputs["b"], inputs["c"]), tmp_path)
    model = load_model(out, CPU, torch.float32)
    assert model.arch is Arch.SD1
    assert model.spec.kind == "SD 1.x"
    merged_conv = tensors(out)["model.diffusion_model.out.2.weight"].float()
    assert torch.equal(model.unet.conv_out.weight, merged_conv)


def test_metadata_holds_the_recipe_and_the_models(inputs, tmp_path: Path) -> None:
    def fake_sha256(path: Path) -> str:
        return f"sha-{path.stem}"

    out = merge_checkpoints(
        recipe(inputs["a"], inputs["b"], inputs["c"], multiplier=0.25), tmp_path, fake_sha256
    )
    meta = metadata(out)
    assert meta["format"] == "pt"
    merge = json.loads(meta["sd_merge_recipe"])
    assert merge["method"] == "add_difference"
    assert merge["interp_method"] == "Add difference"
    assert merge["multiplier"] == 0.25
    assert merge["save_dtype"] == "fp16"
    assert merge["primary_model_name"] == inputs["a"].stem
    assert merge["primary_model_hash"] == f"sha-{inputs['a'].stem}"
    assert merge["tertiary_model_hash"] == f"sha-{inputs['c'].stem}"
    assert datetime.fromisoformat(merge["created"]).tzinfo is not None
    models = json.loads(meta["sd_merge_models"])
    assert models == {
        f"sha-{p.stem}": {"name": p.stem, "sha256": f"sha-{p.stem}"}
        for p in (inputs["a"], inputs["b"], inputs["c"])
    }


def test_metadata_without_hashes_keeps_the_lineage_of_merged_inputs(inputs, tmp_path: Path) -> None:
    first = merge_checkpoints(recipe(inputs["a"], inputs["b"], name="first"), tmp_path)
    second = merge_checkpoints(recipe(first, inputs["c"], name="second"), tmp_path)
    merge = json.loads(metadata(second)["sd_merge_recipe"])
    assert merge["primary_model_name"] == "first"
    assert merge["primary_model_hash"] is None
    assert merge["tertiary_model_name"] is None
    models = json.loads(metadata(second)["sd_merge_models"])
    assert set(models) == {"first", inputs["a"].stem, inputs["b"].stem, inputs["c"].stem}
    assert models["first"]["sd_merge_recipe"]["secondary_model_name"] == inputs["b"].stem


def test_different_architectures_are_refused_naming_both(inputs, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as refused:
        merge_checkpoints(recipe(inputs["a"], inputs["xl"]), tmp_path)
    message = str(refused.value)
    assert inputs["a"].name in message and "SD 1.x" in message
    assert inputs["xl"].name in message and "SDXL" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"method": ADD_DIFF}, "tertiary"),
        ({"tertiary": Path("c.safetensors")}, "two models"),
        ({"multiplier": math.nan}, "finite"),
        ({"method": ADD_DIFF, "tertiary": Path("c.safetensors"), "multiplier": math.inf}, "finite"),
        ({"multiplier": 1.5}, "between 0 and 1"),
        ({"name": "../escape"}, "path separators"),
        ({"name": "sub\\dir"}, "path separators"),
        ({"name": " "}, "needs a name"),
        ({"name": ".hidden"}, "dot"),
        ({"save_dtype": "int8"}, "fp16"),
        ({"method": "average"}, "weighted_sum"),
    ],
)
def test_invalid_recipes_are_refused(options: dict, complaint: str) -> None:
    fields = {"primary": Path("a.safetensors"), "secondary": Path("b.safetensors"), "tertiary": None}
    fields |= {"method": WEIGHTED, "multiplier": 0.5, "name": "out"} | options
    with pytest.raises(ValueError, match=complaint):
        MergeRecipe(**fields)


def test_add_difference_takes_any_finite_multiplier_and_names_are_normalised() -> None:
    made = recipe(Path("a.ckpt"), Path("b.ckpt"), Path("c.ckpt"), multiplier=-2, name=" blend.safetensors ")
    assert made.multiplier == -2.0 and made.name == "blend"
    assert made.file_name == "blend.safetensors"
    assert made.method is ADD_DIFF


@pytest.mark.parametrize("method", [WEIGHTED, ADD_DIFF])
def test_inpainting_primary_keeps_its_extra_channels(inputs, tmp_path: Path, method: MergeMethod) -> None:
    c = inputs["c"] if method is ADD_DIFF else None
    out = merge_checkpoints(recipe(inputs["inpaint"], inputs["b"], c, save_dtype="fp32"), tmp_path)
    a, b, merged = tensors(inputs["inpaint"]), tensors(inputs["b"]), tensors(out)
    conv = merged[INPUT_CONV_KEY]
    assert conv.shape[1] == 9
    assert torch.equal(conv[:, 4:], a[INPUT_CONV_KEY][:, 4:].float())
    a4, b4 = a[INPUT_CONV_KEY][:, :4].float(), b[INPUT_CONV_KEY].float()
    if method is WEIGHTED:
        expected = a4 * 0.7 + b4 * 0.3
    else:
        expected = a4 + (b4 - tensors(inputs["c"])[INPUT_CONV_KEY].float()) * 0.3
    assert torch.equal(conv[:, :4], expected)
    model = load_model(out, CPU, torch.float32)
    assert model.spec.is_inpainting and model.unet.config.in_channels == 9


def test_inpainting_model_must_be_the_primary(inputs, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="make it the primary model"):
        merge_checkpoints(recipe(inputs["a"], inputs["inpaint"]), tmp_path)
    with pytest.raises(CheckpointError, match="both be inpainting models or both normal"):
        merge_checkpoints(recipe(inputs["inpaint"], inputs["inpaint"], inputs["c"]), tmp_path)


def test_existing_output_is_kept_unless_overwrite(inputs, tmp_path: Path) -> None:
    existing = tmp_path / "merged.safetensors"
    existing.write_bytes(b"keep me")
    with pytest.raises(ValueError, match="already exists"):
        merge_checkpoints(recipe(inputs["a"], inputs["b"]), tmp_path)
    assert existing.read_bytes() == b"keep me"
    merge_checkpoints(recipe(inputs["a"], inputs["b"], overwrite=True), tmp_path)
    assert len(tensors(existing)) == len(tensors(inputs["a"]))


def test_output_may_not_replace_an_input(inputs) -> None:
    with pytest.raises(ValueError, match="one of the inputs"):
        merge_checkpoints(
            recipe(inputs["a"], inputs["b"], name=inputs["a"].stem, overwrite=True), inputs["a"].parent
        )


def test_truncated_input_is_refused_and_writes_nothing(inputs, tmp_path: Path) -> None:
    data = inputs["b"].read_bytes()
    broken = tmp_path / "in" / "broken.safetensors"
    broken.parent.mkdir()
    broken.write_bytes(data[: len(data) // 2])
    out_dir = tmp_path / "out"
    with pytest.raises(CheckpointError, match="broken.safetensors"):
        merge_checkpoints(recipe(inputs["a"], broken), out_dir)
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_a_failed_write_leaves_no_partial_file(
    inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail_halfway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("webui.model_manager.merge.save_file", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        merge_checkpoints(recipe(inputs["a"], inputs["b"]), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_pickle_inputs_are_read_whole(inputs, tmp_path: Path) -> None:
    pickled = tmp_path / "b.ckpt"
    torch.save({"state_dict": tensors(inputs["b"])}, pickled)
    out = merge_checkpoints(recipe(inputs["a"], pickled, multiplier=1.0), tmp_path)
    b, merged = tensors(inputs["b"]), tensors(out)
    assert all(torch.equal(merged[key], b[key]) for key in SAMPLE_KEYS)


def test_baked_vae_replaces_the_merged_one(inputs, tmp_path: Path) -> None:
    donor = build_tiny_state_dict("sd15", seed=9)
    bare_vae = {
        key.removeprefix(VAE_PREFIX): value for key, value in donor.items() if key.startswith(VAE_PREFIX)
    }
    vae_file = tmp_path / "donor.vae.safetensors"
    save_file(bare_vae, str(vae_file))
    out = merge_checkpoints(recipe(inputs["a"], inputs["b"], vae=vae_file), tmp_path / "out")
    merged = tensors(out)
    assert all(torch.equal(merged[VAE_PREFIX + key], value) for key, value in bare_vae.items())
    assert json.loads(metadata(out)["sd_merge_recipe"])["bake_in_vae"] == vae_file.name
    not_a_vae = tmp_path / "unet-only.safetensors"
    save_file({"decoder.something": torch.zeros(1)}, str(not_a_vae))
    with pytest.raises(CheckpointError, match="not a VAE"):
        merge_checkpoints(recipe(inputs["a"], inputs["b"], vae=not_a_vae, name="other"), tmp_path / "out")


def test_command_line_exit_codes(inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, c, xl = (str(inputs[role]) for role in ("a", "b", "c", "xl"))
    common = ["--name", "cli", "--out-dir", str(tmp_path)]
    assert merge_main(["--method", "add_difference", "--multiplier", "0.5", a, b, c, *common]) == 0
    assert (tmp_path / "cli.safetensors").is_file()
    assert "cli.safetensors" in capsys.readouterr().out
    assert merge_main(["--multiplier", "0.5", a, b, *common]) == 2
    assert "already exists" in capsys.readouterr().err
    assert merge_main(["--multiplier", "0.5", a, xl, "--name", "x", "--out-dir", str(tmp_path)]) == 2
    assert "SDXL" in capsys.readouterr().err
    assert merge_main(["--method", "add_difference", "--multiplier", "0.5", a, b, "--name", "y"]) == 2
    assert "tertiary" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad_arguments:
        merge_main(["--multiplier", "0.5", a, "--name", "z"])
    assert bad_arguments.value.code == 2


def test_v_prediction_declared_by_a_yaml_beside_a_survives_the_merge(tmp_path: Path) -> None:
    a = write_tiny_checkpoint("sd2", tmp_path / "a.safetensors", seed=1)
    b = write_tiny_checkpoint("sd2", tmp_path / "b.safetensors", seed=2)
    a.with_suffix(".yaml").write_text("model:\n  params:\n    parameterization: v\n")
    recipe = MergeRecipe(a, b, None, MergeMethod.WEIGHTED_SUM, 0.5, "blend")
    merged = merge_checkpoints(recipe, tmp_path / "out")
    assert load_model(merged, CPU, torch.float32).spec.prediction_type == "v_prediction"

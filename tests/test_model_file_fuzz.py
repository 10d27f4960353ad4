"""Damaged model files: each one is listed as unusable with a reason, and the scan goes on.

Mutated copies of a tiny checkpoint (tensors dropped, reshaped, of the wrong dtype; bytes
truncated, random, a header that lies) go through the real registry. A file it calls usable
must then really load; one it refuses must say why; nothing may raise out of a scan.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from webui.model_manager.facts import FileFactsCache
from webui.model_manager.load import load_model
from webui.model_manager.registry import ModelFolders, ModelKind, ModelRegistry
from webui.model_manager.state_dict import CheckpointError

CPU = torch.device("cpu")
Tensors = dict[str, torch.Tensor]

# Tensors the detector reads to derive the architecture, and a few it never looks at.
_UNET = "model.diffusion_model."
_TEXT = "cond_stage_model.transformer.text_model."
_VAE = "first_stage_model."
KEYS = (
    f"{_UNET}input_blocks.0.0.weight",
    f"{_UNET}input_blocks.1.0.out_layers.3.weight",
    f"{_UNET}input_blocks.1.1.proj_in.weight",
    f"{_UNET}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
    f"{_UNET}middle_block.1.proj_in.weight",
    f"{_UNET}output_blocks.0.0.in_layers.2.weight",
    f"{_UNET}out.2.weight",
    f"{_UNET}time_embed.0.weight",
    f"{_TEXT}embeddings.token_embedding.weight",
    f"{_TEXT}embeddings.position_embedding.weight",
    f"{_TEXT}encoder.layers.0.mlp.fc1.weight",
    f"{_TEXT}encoder.layers.1.self_attn.q_proj.bias",
    f"{_TEXT}final_layer_norm.weight",
    f"{_VAE}encoder.conv_in.weight",
    f"{_VAE}encoder.down.0.block.0.conv2.weight",
    f"{_VAE}decoder.conv_in.weight",
    f"{_VAE}decoder.conv_out.weight",
    f"{_VAE}decoder.mid.attn_1.q.weight",
)


@pytest.fixture(scope="module")
def base(tiny_dir: Path) -> Tensors:
    return load_file(tiny_dir / "tiny-sd15.safetensors")


def _drop(key: str) -> Callable[[Tensors], Tensors]:
    return lambda t: {k: v for k, v in t.items() if k != key}


def _replace(key: str, make: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Tensors], Tensors]:
    return lambda t: {**t, key: make(t[key]).contiguous()}


def _tensor_mutations() -> dict[str, Callable[[Tensors], Tensors]]:
    mutations: dict[str, Callable[[Tensors], Tensors]] = {}
    for key in KEYS:
        short = key.split(".", 1)[1]
        mutations[f"drop {short}"] = _drop(key)
        mutations[f"flatten {short}"] = _replace(key, lambda v: v.flatten())
        mutations[f"scalar {short}"] = _replace(key, lambda v: v.flatten()[0])
        mutations[f"extra dim {short}"] = _replace(key, lambda v: v[None])
        mutations[f"narrow {short}"] = _replace(key, lambda v: v[: max(1, v.shape[0] // 2)])
        mutations[f"empty {short}"] = _replace(key, lambda v: v[:0])
        mutations[f"int64 {short}"] = _replace(key, lambda v: v.to(torch.int64))
        mutations[f"bool {short}"] = _replace(key, lambda v: v > 0)
    mutations["only the UNet"] = lambda t: {k: v for k, v in t.items() if k.startswith(_UNET)}
    mutations["no VAE"] = lambda t: {k: v for k, v in t.items() if not k.startswith(_VAE)}
    mutations["drop every proj_in"] = lambda t: {k: v for k, v in t.items() if "proj_in" not in k}
    mutations["a tensor of 70000 tokens"] = _replace(
        f"{_TEXT}embeddings.position_embedding.weight", lambda v: torch.zeros(70000, v.shape[1])
    )
    return mutations


# The OpenCLIP encoders (SD 2.x, SDXL's second) and SDXL's size/crop conditioning.
_OPENCLIP = ("token_embedding.weight", "positional_embedding", "transformer.resblocks.0.mlp.c_fc.weight")
OTHER_ARCH_KEYS = {
    "sd2": tuple(f"cond_stage_model.model.{key}" for key in _OPENCLIP),
    "sdxl": (
        *(f"conditioner.embedders.1.model.{key}" for key in (*_OPENCLIP, "text_projection")),
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
        f"{_UNET}label_emb.0.0.weight",
        f"{_UNET}label_emb.0.2.weight",
    ),
}
OTHER_ARCH_MUTATIONS: dict[str, Callable[[str], Callable[[Tensors], Tensors]]] = {
    "drop": _drop,
    "flatten": lambda key: _replace(key, lambda v: v.flatten()),
    "narrow": lambda key: _replace(key, lambda v: v[: max(1, v.shape[0] // 2)]),
    "int64": lambda key: _replace(key, lambda v: v.to(torch.int64)),
}


def _write_tensors(path: Path, tensors: Tensors) -> None:
    save_file(tensors, str(path))


def _header_file(path: Path, header: bytes, length: int | None = None, tail: bytes = b"") -> None:
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + tail)


def _file_mutations(source: Path) -> dict[str, tuple[str, Callable[[Path], None]]]:
    """name -> (suffix, writer) for damage below the tensor level."""
    data = source.read_bytes()
    rng = random.Random(7)
    random_bytes = bytes(rng.randrange(256) for _ in range(4096))
    good_header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}

    def torch_bytes(obj: object) -> bytes:
        stream = io.BytesIO()
        torch.save(obj, stream)
        return stream.getvalue()

    def zip_of(name: str, content: bytes) -> bytes:
        stream = io.BytesIO()
        with zipfile.ZipFile(stream, "w") as archive:
            archive.writestr(name, content)
        return stream.getvalue()

    saved = torch_bytes({"state_dict": {"x": torch.zeros(2)}})
    return {
        "empty file": (".safetensors", lambda p: p.write_bytes(b"")),
        "seven bytes": (".safetensors", lambda p: p.write_bytes(b"\x01" * 7)),
        "random bytes": (".safetensors", lambda p: p.write_bytes(random_bytes)),
        "truncated to half": (".safetensors", lambda p: p.write_bytes(data[: len(data) // 2])),
        "truncated header": (".safetensors", lambda p: p.write_bytes(data[:200])),
        "header with bad JSON": (".safetensors", lambda p: _header_file(p, b"{not json")),
        "header that is a list": (".safetensors", lambda p: _header_file(p, b"[1, 2, 3]")),
        "huge header length": (".safetensors", lambda p: _header_file(p, b"{}", length=2**63)),
        "header length past the end": (".safetensors", lambda p: _header_file(p, b"{}", length=10**6)),
        "empty header": (".safetensors", lambda p: _header_file(p, b"{}")),
        "offsets past the data": (
            ".safetensors",
            lambda p: _header_file(p, json.dumps(good_header).encode(), tail=b"\0" * 4),
        ),
        "unknown dtype": (
            ".safetensors",
            lambda p: _header_file(
                p,
                json.dumps({"a": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}).encode(),
                tail=b"\0" * 8,
            ),
        ),
        "metadata that is not text": (
            ".safetensors",
            lambda p: _header_file(
                p, json.dumps({**good_header, "__metadata__": {"k": 1}}).encode(), tail=b"\0" * 8
            ),
        ),
        "not a LDM checkpoint": (".safetensors", lambda p: save_file({"a": torch.zeros(2)}, str(p))),
        "ckpt that is not a zip": (".ckpt", lambda p: p.write_bytes(random_bytes)),
        "ckpt that is text": (
            ".ckpt",
            lambda p: p.write_bytes(b"version https://git-lfs.github.com/spec/v1\n"),
        ),
        "ckpt empty": (".ckpt", lambda p: p.write_bytes(b"")),
        "ckpt zip of something else": (".ckpt", lambda p: p.write_bytes(zip_of("readme.txt", b"hello"))),
        "ckpt truncated": (".ckpt", lambda p: p.write_bytes(saved[: len(saved) // 2])),
        "ckpt holding a list": (".ckpt", lambda p: p.write_bytes(torch_bytes([torch.zeros(2)]))),
        "ckpt holding no tensors": (".ckpt", lambda p: p.write_bytes(torch_bytes({"epoch": 3}))),
        "ckpt state_dict of junk": (".ckpt", lambda p: p.write_bytes(saved)),
        "pt with code in it": (".pt", lambda p: p.write_bytes(torch_bytes({"x": _Evil()}))),
    }


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("code ran",))


def _registry(data_dir: Path) -> ModelRegistry:
    return ModelRegistry(ModelFolders.under(data_dir), FileFactsCache(data_dir / "webui-file-facts.json"))


def _check_folder(data_dir: Path, damaged: str) -> None:
    """The damaged file is refused with a reason or really loads; the good one stays listed."""
    registry = _registry(data_dir)
    registry.refresh()  # a second scan goes through the cached facts
    usable = {f.filename: f for f in registry.files(ModelKind.CHECKPOINT)}
    refused = {f.filename: f.error for f in registry.unusable()}
    assert "good.safetensors" in usable
    if damaged in refused:
        reason = refused[damaged]
        assert reason and reason.strip() and "Traceback" not in reason
        with pytest.raises(CheckpointError, match="cannot be used"):
            registry.find(ModelKind.CHECKPOINT, Path(damaged).stem)
    else:
        assert damaged in usable, f"{damaged} is neither usable nor listed as unusable"
        model = load_model(usable[damaged].path, CPU, torch.float32)
        for tokenizer, encoder in zip(model.tokenizers, model.text_encoders):
            # A whole prompt's worth of tokens, up to the vocabulary's last id (end of text).
            ids = tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
            encoder(ids)


@pytest.fixture
def checkpoint_folder(tmp_path: Path, tiny_dir: Path) -> Path:
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    shutil.copy(tiny_dir / "tiny-sd15.safetensors", folder / "good.safetensors")
    return folder


@pytest.mark.parametrize("mutation", sorted(_tensor_mutations()))
def test_a_mutated_checkpoint_is_refused_with_a_reason_or_loads(
    mutation: str, base: Tensors, checkpoint_folder: Path
) -> None:
    _write_tensors(checkpoint_folder / "damaged.safetensors", _tensor_mutations()[mutation](base))
    _check_folder(checkpoint_folder.parent.parent, "damaged.safetensors")


@pytest.mark.parametrize("mutation", sorted(_file_mutations(Path(__file__))))
def test_a_damaged_file_is_refused_with_a_reason(
    mutation: str, tiny_dir: Path, checkpoint_folder: Path
) -> None:
    suffix, write = _file_mutations(tiny_dir / "tiny-sd15.safetensors")[mutation]
    write(checkpoint_folder / f"damaged{suffix}")
    registry = _registry(checkpoint_folder.parent.parent)
    refused = {f.filename: f.error for f in registry.unusable()}
    assert refused.get(f"damaged{suffix}"), refused
    assert [f.filename for f in registry.files(ModelKind.CHECKPOINT)] == ["good.safetensors"]


@pytest.mark.parametrize(
    ("arch", "key", "mutation"),
    [(arch, key, m) for arch, keys in OTHER_ARCH_KEYS.items() for key in keys for m in OTHER_ARCH_MUTATIONS],
)
def test_mutated_sd2_and_sdxl_checkpoints_are_refused_with_a_reason_or_load(
    arch: str, key: str, mutation: str, tiny_dir: Path, checkpoint_folder: Path
) -> None:
    tensors = load_file(tiny_dir / f"tiny-{arch}.safetensors")
    _write_tensors(checkpoint_folder / "damaged.safetensors", OTHER_ARCH_MUTATIONS[mutation](key)(tensors))
    _check_folder(checkpoint_folder.parent.parent, "damaged.safetensors")

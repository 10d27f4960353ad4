"""Phase 3: damaged model files dropped into models/Stable-diffusion, models/Lora and
embeddings/ of the running server (the mutations of tests/test_model_file_fuzz.py, plus damaged
LoRAs and embeddings). After a refresh each must be listed as unusable with a reason, or really
work; prompts and model choices naming them must not crash a request."""

from __future__ import annotations

import random
import re
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import torch
from safetensors.torch import load_file, save_file

from tests.hostile.report import Phase
from tests.hostile.server import CHECKPOINT, Server
from tests.test_model_file_fuzz import _file_mutations, _header_file, _tensor_mutations
from webui.tools.tiny_networks import write_tiny_embedding, write_tiny_lora

Writer = Callable[[Path], None]
TENSOR_SAMPLE = 6  # every 6th of the ~150 tensor mutations: each kind of damage, many tensors


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]


def _evil_pt(path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("code ran",))

    torch.save({"string_to_param": {"*": Evil()}}, str(path))


def _common(good: bytes) -> dict[str, tuple[str, Writer]]:
    noise = random.Random(3).randbytes(4096)
    return {
        "empty": (".safetensors", lambda p: p.write_bytes(b"")),
        "random bytes": (".safetensors", lambda p: p.write_bytes(noise)),
        "truncated": (".safetensors", lambda p: p.write_bytes(good[: len(good) // 2])),
        "bad json header": (".safetensors", lambda p: _header_file(p, b"{oops")),
        "header length past the end": (".safetensors", lambda p: _header_file(p, b"{}", length=10**7)),
        "pickle with code": (".pt", _evil_pt),
        "pt of random bytes": (".pt", lambda p: p.write_bytes(noise)),
    }


def _tensors(change: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]], good: Path) -> Writer:
    return lambda p: save_file({k: v.contiguous() for k, v in change(load_file(good)).items()}, str(p))


def _lora_mutations(good: Path) -> dict[str, tuple[str, Writer]]:
    def first(kind: str) -> Callable[[dict[str, torch.Tensor]], str]:
        return lambda t: next(k for k in sorted(t) if k.endswith(kind))

    def at(kind: str, make: Callable[[torch.Tensor], torch.Tensor]) -> Writer:
        return _tensors(lambda t: {**t, first(kind)(t): make(t[first(kind)(t)])}, good)

    return {
        **_common(good.read_bytes()),
        "every tensor int64": (".safetensors", _tensors(lambda t: {k: v.long() for k, v in t.items()}, good)),
        "no alpha": (
            ".safetensors",
            _tensors(lambda t: {k: v for k, v in t.items() if "alpha" not in k}, good),
        ),
        "flat up weight": (".safetensors", at("lora_up.weight", lambda v: v.flatten())),
        "narrow down weight": (".safetensors", at("lora_down.weight", lambda v: v[:1])),
        "alpha NaN": (".safetensors", at(".alpha", lambda v: torch.full_like(v, float("nan")))),
        "keys of nothing": (
            ".safetensors",
            lambda p: save_file({"x.lora_up.weight": torch.ones(2, 2)}, str(p)),
        ),
        "sdxl lora": (".safetensors", lambda p: write_tiny_lora("sdxl", p) and None),
    }


def _embedding_mutations(good: Path) -> dict[str, tuple[str, Writer]]:
    def one(tensor: torch.Tensor) -> Writer:
        return lambda p: save_file({"emb_params": tensor}, str(p))

    return {
        **_common(good.read_bytes()),
        "wrong width": (".safetensors", one(torch.randn(2, 7))),
        "three dims": (".safetensors", one(torch.randn(1, 2, 32))),
        "no vectors": (".safetensors", one(torch.zeros(0, 32))),
        "int64": (".safetensors", one(torch.ones(2, 32, dtype=torch.int64))),
        "NaN vectors": (".safetensors", one(torch.full((2, 32), float("nan")))),
        "10000 vectors": (".safetensors", one(torch.randn(10_000, 32))),
        "two tables": (
            ".safetensors",
            lambda p: save_file({"a": torch.ones(2, 32), "b": torch.ones(2, 32)}, str(p)),
        ),
        "pt without string_to_param": (".pt", lambda p: torch.save({"name": "x"}, str(p))),
        "sdxl embedding": (".safetensors", lambda p: write_tiny_embedding("sdxl", p) and None),
    }


def write_all(data_dir: Path) -> dict[str, list[str]]:
    """Writes the damaged files; returns their file names by kind."""
    checkpoint = data_dir / "models" / "Stable-diffusion" / f"{CHECKPOINT}.safetensors"
    folders = {
        "checkpoint": checkpoint.parent,
        "lora": data_dir / "models" / "Lora",
        "embedding": data_dir / "embeddings",
    }
    with tempfile.TemporaryDirectory() as scratch:
        good_lora = write_tiny_lora("sd15", Path(scratch) / "lora.safetensors")
        good_embedding = write_tiny_embedding("sd15", Path(scratch) / "emb.safetensors")
        base = load_file(checkpoint)
        tensor = _tensor_mutations()
        plans: dict[str, dict[str, tuple[str, Writer]]] = {
            "checkpoint": {
                **{
                    f"tensor {name}": (".safetensors", lambda p, n=name: save_file(tensor[n](base), str(p)))
                    for name in sorted(tensor)[::TENSOR_SAMPLE]
                },
                **{f"file {name}": entry for name, entry in _file_mutations(checkpoint).items()},
            },
            "lora": _lora_mutations(good_lora),
            "embedding": _embedding_mutations(good_embedding),
        }
        written: dict[str, list[str]] = {}
        for kind, plan in plans.items():
            folders[kind].mkdir(parents=True, exist_ok=True)
            for name, (suffix, write) in plan.items():
                path = folders[kind] / f"bad-{_slug(name)}{suffix}"
                write(path)
                written.setdefault(kind, []).append(path.name)
    return written


def run(server: Server) -> Phase:
    phase = Phase("3. hostile model files")
    written = write_all(server.data_dir)
    phase.figures["files written"] = {kind: len(names) for kind, names in written.items()}
    with server.client("alice") as admin, server.client("bob") as bob:
        for what in ("checkpoints", "loras", "embeddings", "vae"):
            answer = admin.post(f"/sdapi/v1/refresh-{what}")
            phase.statuses[answer.status_code] += 1
            if answer.status_code >= 400:
                phase.find(f"refresh-{what}: {answer.status_code} {answer.text[:200]}")
        listed = admin.get("/api/v1/models").json()
        for path in ("/sdapi/v1/sd-models", "/sdapi/v1/loras", "/sdapi/v1/embeddings"):
            answer = bob.get(path)
            phase.statuses[answer.status_code] += 1
            if answer.status_code != 200:
                phase.find(f"GET {path}: {answer.status_code}")
        use_them(phase, bob, written, check(phase, written, listed))
    return phase.end()


def check(phase: Phase, written: dict[str, list[str]], listed: list[dict]) -> set[tuple[str, str]]:
    """Counts the files listed unusable (with a clean reason); returns the others (kind, stem)."""
    unusable = {(entry["kind"], entry["name"]): entry for entry in listed if not entry["usable"]}
    counts: Counter[str] = Counter()
    others = set()
    for kind, names in written.items():
        for stem in (Path(name).stem for name in names):
            entry = unusable.get((kind, stem))
            if entry is None:
                others.add((kind, stem))
                continue
            counts[kind] += 1
            reason = entry.get("error") or ""
            if not reason.strip() or "Traceback" in reason:
                phase.find(f"{kind} {stem}: listed unusable without a clean reason: {reason[:120]!r}")
    phase.figures["listed unusable with a reason"] = dict(sorted(counts.items()))
    phase.figures["sample reasons"] = [
        f"{kind} {name}: {(entry.get('error') or '')[:100]}"
        for (kind, name), entry in list(unusable.items())[::15]
    ]
    return others


def use_them(
    phase: Phase, bob: httpx.Client, written: dict[str, list[str]], others: set[tuple[str, str]]
) -> None:
    """Each damaged checkpoint chosen, each damaged LoRA and embedding named in a prompt."""
    small = {"steps": 1, "width": 64, "height": 64, "seed": 1}
    outcomes: Counter[str] = Counter()
    attempts: list[tuple[str, str, dict]] = []
    for kind, names in written.items():
        for stem in (Path(name).stem for name in names):
            if kind == "checkpoint":
                body = {"prompt": "a cat", "override_settings": {"sd_model_checkpoint": stem}}
            else:
                body = {"prompt": f"a cat <lora:{stem}:1>" if kind == "lora" else f"a cat {stem}"}
            attempts.append((kind, stem, body))
    not_refused = []
    for kind, stem, body in attempts:
        answer = bob.post("/sdapi/v1/txt2img", json={**small, **body})
        phase.statuses[answer.status_code] += 1
        outcomes[str(answer.status_code)] += 1
        if answer.status_code >= 500:
            phase.find(f"using {kind} {stem}: {answer.status_code} {answer.text[:160]}")
        if (kind, stem) in others:
            detail = answer.json().get("detail") if answer.status_code != 200 else "generated"
            not_refused.append(f"{kind} {stem}: {answer.status_code} {str(detail)[:110]}")
    good = bob.post("/sdapi/v1/txt2img", json={**small, "prompt": "a cat"})
    phase.figures["requests using a damaged file, by status"] = dict(sorted(outcomes.items()))
    phase.figures["not listed unusable; what using it gave"] = not_refused
    phase.figures["a plain request afterwards"] = good.status_code
    if good.status_code != 200:
        phase.find(f"plain generation after the damaged files: {good.status_code} {good.text[:200]}")

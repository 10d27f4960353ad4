"""The T5 tokenizer of SD 3.x's third text encoder, built from the vocabulary shipped here.

Nothing is downloaded, ever: the tokenizer comes from `assets/t5_tokenizer.json.gz` (see
assets/NOTICE.md), or from a folder the user already has, such as a ComfyUI install's
`comfy/text_encoders/t5_tokenizer` or a diffusers folder's `tokenizer_3`.
"""

from __future__ import annotations

import functools
import gzip
from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer
from transformers import T5TokenizerFast

# diffusers' SD3 pipelines encode prompts for T5 at 256 tokens by default.
T5_MAX_LENGTH = 256
# 32,000 SentencePiece pieces and 100 <extra_id_N> sentinels.
T5_VOCAB_SIZE = 32100
# Where a ComfyUI install keeps the same tokenizer, relative to its root.
COMFYUI_T5_FOLDER = Path("comfy") / "text_encoders" / "t5_tokenizer"
_TOKENIZER_JSON = "tokenizer.json"


class T5TokenizerError(ValueError):
    """A tokenizer folder that cannot give the T5 tokenizer; the message says why."""


@functools.cache
def _shipped_json() -> str:
    raw = resources.files("webui.model_manager.assets").joinpath("t5_tokenizer.json.gz").read_bytes()
    return gzip.decompress(raw).decode("utf-8")


def build_t5_tokenizer(folder: Path | None = None) -> T5TokenizerFast:
    """The T5 v1.1 tokenizer (32,100 ids, `</s>` appended, `<pad>` = 0).

    `folder` None: the copy shipped in this package. Otherwise a folder holding a T5
    `tokenizer.json` (a ComfyUI `t5_tokenizer` folder, a diffusers `tokenizer_3`) or a ComfyUI
    install's root, whose `comfy/text_encoders/t5_tokenizer` is used."""
    if folder is None:
        return _from_tokenizer(Tokenizer.from_str(_shipped_json()), "the shipped T5 vocabulary")
    path = find_t5_tokenizer_json(Path(folder))
    if path is None:
        raise T5TokenizerError(
            f"{folder}: no T5 {_TOKENIZER_JSON} there (nor under {COMFYUI_T5_FOLDER.as_posix()}); "
            "leave the folder out to use the T5 tokenizer shipped with the app"
        )
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises its own Exception subclass for any bad JSON
        raise T5TokenizerError(f"{path}: not a readable tokenizer.json: {error}") from error
    return _from_tokenizer(tokenizer, str(path))


def find_t5_tokenizer_json(folder: Path) -> Path | None:
    """`tokenizer.json` in `folder` itself, or in the T5 tokenizer folder of a ComfyUI root there."""
    for candidate in (folder / _TOKENIZER_JSON, folder / COMFYUI_T5_FOLDER / _TOKENIZER_JSON):
        if candidate.is_file():
            return candidate
    return None


def _from_tokenizer(tokenizer: Tokenizer, source: str) -> T5TokenizerFast:
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size != T5_VOCAB_SIZE or tokenizer.token_to_id("</s>") != 1 or tokenizer.token_to_id("<pad>") != 0:
        raise T5TokenizerError(
            f"{source}: not the T5 v1.1 tokenizer ({size} ids; T5 has {T5_VOCAB_SIZE}, "
            "with <pad> = 0 and </s> = 1)"
        )
    return T5TokenizerFast(
        tokenizer_object=tokenizer,
        extra_ids=0,  # the JSON already holds the 100 sentinels
        model_max_length=T5_MAX_LENGTH,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
    )

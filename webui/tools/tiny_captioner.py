"""Write a seeded, random-weight, tiny BLIP captioning folder (transformers layout) for tests.

python -m webui.tools.tiny_captioner models/BLIP/tiny-blip
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

# A BERT vocabulary of a few words; BLIP's decoder starts from [DEC] and stops at [SEP].
_WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "[DEC]",
    "a",
    "photo",
    "of",
    "cat",
    "dog",
    "lighthouse",
    "sea",
]
_SIDE = 32


def write_tiny_captioner(folder: Path, seed: int = 0) -> Path:
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip import BlipImageProcessorPil

    with tempfile.TemporaryDirectory() as scratch:
        vocab = Path(scratch) / "vocab.txt"
        vocab.write_text("\n".join(_WORDS) + "\n")
        tokenizer = BertTokenizer(str(vocab), bos_token="[DEC]")
    processor = BlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": _SIDE, "width": _SIDE}), tokenizer=tokenizer
    )
    small = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = BlipConfig(
        text_config={
            **small,
            "vocab_size": len(_WORDS),
            "encoder_hidden_size": 16,
            "max_position_embeddings": 64,
            "bos_token_id": _WORDS.index("[DEC]"),
            "pad_token_id": 0,
            "sep_token_id": _WORDS.index("[SEP]"),
            "eos_token_id": _WORDS.index("[SEP]"),
        },
        vision_config={**small, "image_size": _SIDE, "patch_size": 16},
        projection_dim=16,
    )
    torch.manual_seed(seed)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    write_tiny_captioner(Path(sys.argv[1]))

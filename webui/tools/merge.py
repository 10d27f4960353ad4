"""Merge checkpoints from the command line, as the web UI's checkpoint merger does.

    python -m webui.tools.merge --method weighted_sum --multiplier 0.3 A.safetensors B.safetensors \\
        --name blend --out-dir models/Stable-diffusion

Exits 0 with the written path, or 2 with the reason the merge was refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from webui.model_manager.facts import file_sha256
from webui.model_manager.merge import SAVE_DTYPES, MergeMethod, MergeRecipe, merge_checkpoints

EXIT_REFUSED = 2  # the same status argparse uses for bad arguments


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if len(args.models) not in (2, 3):
        parser.error(f"give two models (A B) or three (A B C), not {len(args.models)}")
    primary, secondary, *rest = args.models
    try:
        recipe = MergeRecipe(
            primary=primary,
            secondary=secondary,
            tertiary=rest[0] if rest else None,
            method=MergeMethod(args.method),
            multiplier=args.multiplier,
            name=args.name,
            save_dtype=args.dtype,
            vae=args.vae,
            overwrite=args.overwrite,
        )
        out_dir = args.out_dir if args.out_dir is not None else primary.parent
        path = merge_checkpoints(recipe, out_dir, hashes=None if args.no_hash else file_sha256)
    except (ValueError, OSError) as error:  # CheckpointError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"wrote {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=[method.value for method in MergeMethod], default="weighted_sum")
    parser.add_argument("--multiplier", type=float, required=True, help="M: A*(1-M) + B*M, or A + (B - C)*M")
    parser.add_argument("models", nargs="+", type=Path, metavar="MODEL", help="A B, or A B C")
    parser.add_argument("--name", required=True, help="the output file name, without a folder")
    parser.add_argument("--out-dir", type=Path, help="where to write it (default: A's folder)")
    parser.add_argument("--dtype", choices=list(SAVE_DTYPES), default="fp16")
    parser.add_argument("--vae", type=Path, help="an LDM-layout VAE to bake in")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file of that name")
    parser.add_argument(
        "--no-hash", action="store_true", help="skip the inputs' sha256 in the metadata (saves a read)"
    )
    return parser


if __name__ == "__main__":
    raise SystemExit(main())

"""A folder of images with a same-named .txt caption beside each (kohya's and A1111's convention).

Images are grouped into aspect-ratio buckets of about `resolution` squared pixels, each
resized to cover its bucket and centre-cropped, so a batch holds one size and nothing is
squashed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from webui.training.progress import TrainingError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
BUCKET_STEP = 64
MAX_ASPECT = 2.0
_MAX_NAMED = 5  # how many offending files an error lists


@dataclass(frozen=True)
class CaptionedImage:
    path: Path
    caption: str


def read_folder(folder: Path) -> list[CaptionedImage]:
    """Every image in `folder` with its caption; TrainingError names what is missing or unreadable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TrainingError(f"dataset folder {folder} does not exist or is not a folder", "dataset")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise TrainingError(f"dataset folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)})", "dataset")
    uncaptioned = [p.name for p in images if not p.with_suffix(".txt").is_file()]
    if uncaptioned:
        raise TrainingError(
            f"{len(uncaptioned)} image(s) in {folder} have no .txt caption beside them: "
            f"{_names(uncaptioned)} (write one line describing each, in a file of the same name)",
            "dataset",
        )
    unreadable = [p.name for p in images if not _readable(p)]
    if unreadable:
        raise TrainingError(f"not readable images in {folder}: {_names(unreadable)}", "dataset")
    return [CaptionedImage(p, _caption(p.with_suffix(".txt"))) for p in images]


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMED])
    return shown + (f" and {len(names) - _MAX_NAMED} more" if len(names) > _MAX_NAMED else "")


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False


def _caption(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TrainingError(f"cannot read the caption {path.name}: {error}", "dataset") from error
    return " ".join(text.split())


def bucket_sizes(resolution: int) -> list[tuple[int, int]]:
    """(width, height) pairs in steps of 64 whose area is at most resolution squared."""
    area = resolution * resolution
    sizes = set()
    width = BUCKET_STEP
    while width <= resolution * MAX_ASPECT:
        height = min(int(area // width) // BUCKET_STEP * BUCKET_STEP, int(width * MAX_ASPECT))
        if height >= BUCKET_STEP and max(width, height) / min(width, height) <= MAX_ASPECT:
            sizes.add((width, height))
        width += BUCKET_STEP
    return sorted(sizes)


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    ratio = size[0] / size[1]
    return min(buckets, key=lambda b: (abs(b[0] / b[1] - ratio), -b[0] * b[1]))


def fit_to_bucket(image: Image.Image, bucket: tuple[int, int]) -> Image.Image:
    """Resize to cover `bucket`, then crop the middle."""
    width, height = bucket
    scale = max(width / image.width, height / image.height)
    resized = image.convert("RGB").resize(
        (max(width, round(image.width * scale)), max(height, round(image.height * scale))),
        Image.Resampling.LANCZOS,
    )
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def load_buckets(
    items: list[CaptionedImage], resolution: int
) -> dict[tuple[int, int], list[tuple[Image.Image, str]]]:
    buckets = bucket_sizes(resolution)
    grouped: dict[tuple[int, int], list[tuple[Image.Image, str]]] = {}
    for item in items:
        with Image.open(item.path) as image:
            bucket = nearest_bucket(image.size, buckets)
            grouped.setdefault(bucket, []).append((fit_to_bucket(image, bucket), item.caption))
    return grouped

"""Saving generated images in A1111's folder layout, with the infotext inside each file."""

from __future__ import annotations

import io
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from webui.outputs.naming import DEFAULT_PATTERN, check_pattern, expand_pattern
from webui.outputs.watermark import embed_watermark

PARAMETERS_KEY = "parameters"
_LEADING_NUMBER = re.compile(r"^(\d+)")
_MODE_NAME = re.compile(r"^[\w-]+$")
_PNG_MODES = ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA")
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286


FOLDER_KINDS = ("images", "grids")
_TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # what write_atomically names its temp files


class ImageSaver:
    """Writes `root/<mode>-images/<YYYY-MM-DD>/<NNNNN>-<pattern>.png` (grids: `<mode>-grids`),
    numbered per day folder.

    The pattern (default `[seed]`) is filled from the image's infotext; see `naming.TOKENS`.
    """

    def __init__(
        self,
        root: Path,
        *,
        watermark: bool = True,
        pattern: str = DEFAULT_PATTERN,
        clock: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.root = Path(root)
        self.watermark = watermark
        self.pattern = check_pattern(pattern)
        self._clock = clock
        # Held from picking the number until the file is in place, so two saves cannot pick
        # the same number (the folder listing is the only record of numbers in use).
        self._lock = threading.Lock()

    def save(self, image: Image.Image, *, mode: str, seed: int, infotext: str, kind: str = "images") -> Path:
        """Write one image (or with `kind="grids"` a grid); the file is what `encode_png` gives."""
        image, pnginfo = _png_ready(image, infotext, self.watermark)  # outside the lock: the slow part
        return self._write(
            mode, seed, infotext, lambda stream: image.save(stream, format="PNG", pnginfo=pnginfo), kind
        )

    def save_encoded(self, png: bytes, *, mode: str, seed: int, infotext: str = "") -> Path:
        """Write a finished PNG file as it is (e.g. one a server sent, infotext and watermark inside)."""
        return self._write(mode, seed, infotext, lambda stream: stream.write(png))

    def _write(
        self,
        mode: str,
        seed: int,
        infotext: str,
        write: Callable[[BinaryIO], object],
        kind: str = "images",
    ) -> Path:
        if not _MODE_NAME.match(mode):
            raise ValueError(f"mode must be a plain folder name, got {mode!r}")
        if kind not in FOLDER_KINDS:
            raise ValueError(f"kind must be one of {FOLDER_KINDS}, got {kind!r}")
        now = self._clock()
        folder = self.root / f"{mode}-{kind}" / now.strftime("%Y-%m-%d")
        stem = expand_pattern(self.pattern, seed, infotext, now)
        with self._lock:
            folder.mkdir(parents=True, exist_ok=True)
            with _folder_lock(folder):
                path = folder / f"{_next_number(folder):05d}-{stem}.png"
                write_atomically(path, write)
        return path

    def encode_png(self, image: Image.Image, infotext: str) -> bytes:
        """The PNG file `save` would write, in memory: same watermark, same infotext."""
        image, pnginfo = _png_ready(image, infotext, self.watermark)
        stream = io.BytesIO()
        image.save(stream, format="PNG", pnginfo=pnginfo)
        return stream.getvalue()


def _png_ready(
    image: Image.Image, infotext: str, watermark: bool
) -> tuple[Image.Image, PngImagePlugin.PngInfo]:
    if watermark:
        image = embed_watermark(image)
    if image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    pnginfo = PngImagePlugin.PngInfo()
    pnginfo.add_text(PARAMETERS_KEY, infotext)
    return image, pnginfo


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Hold the folder against other processes' saves (several workers writing one outputs folder):
    the thread lock above only keeps this process's saves apart. A lock on the folder itself, so no
    file is added; where the system has no such lock (Windows), one process is assumed."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        with suppress(OSError):  # a file system without such locks (some network shares): as before
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _next_number(folder: Path) -> int:
    """One more than the highest leading number in the folder; temp files start with '.'."""
    highest = -1
    with os.scandir(folder) as entries:
        for entry in entries:
            match = _LEADING_NUMBER.match(entry.name)
            if match:
                highest = max(highest, int(match.group(1)))
    return highest + 1


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write via a hidden temp file in the same folder, so readers never see a partial image."""
    temp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}{_TEMP_SUFFIX}")
    # os.open with 0o666 lets the umask decide permissions (mkstemp would force 0600).
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def remove_partial_writes(root: Path) -> list[Path]:
    """Delete the temp files writes cut short by a crash left under `root`; the files removed.

    Call it when the app starts, before any job writes (a running write's temp file looks the same).
    """
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for temp in root.rglob(f".*{_TEMP_SUFFIX}"):
        if _TEMP_NAME.match(temp.name) and temp.is_file():
            temp.unlink(missing_ok=True)
            removed.append(temp)
    return removed


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; folders cannot be opened this way on Windows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_infotext(source: str | os.PathLike[str] | Image.Image) -> str | None:
    """The `parameters` text of a PNG, or the EXIF UserComment of a JPEG/WebP; None if absent.

    Files that are not images give None; a missing file raises FileNotFoundError.
    """
    if isinstance(source, Image.Image):
        return _infotext_of(source)
    try:
        with Image.open(source) as image:
            return _infotext_of(image)
    except UnidentifiedImageError:
        return None


def _infotext_of(image: Image.Image) -> str | None:
    text = image.info.get(PARAMETERS_KEY)
    if isinstance(text, str):
        return text
    try:
        comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except Exception:  # broken EXIF must not stop a "read info" action
        return None
    return _decode_user_comment(comment)


def _decode_user_comment(comment: object) -> str | None:
    """EXIF UserComment: an 8-byte charset prefix, then the text (A1111 writes UNICODE)."""
    if isinstance(comment, str):
        return comment or None
    if not isinstance(comment, bytes) or not comment:
        return None
    prefix, body = comment[:8], comment[8:]
    if prefix == b"UNICODE\x00":
        # Big-endian per piexif (A1111's writer); ASCII-range text starts with a zero byte then.
        encoding = "utf-16-be" if body[:1] == b"\x00" else "utf-16-le"
        text = body.decode(encoding, errors="ignore")
    elif prefix.startswith(b"ASCII"):
        text = body.decode("ascii", errors="ignore")
    else:  # an undefined (all-zero) prefix, or a writer that skipped it
        text = (body if prefix == b"\x00" * 8 else comment).decode("utf-8", errors="ignore")
    text = text.strip("\x00")
    return text or None

"""Installing an extension from a git URL into `extensions/` (it loads at the next start).

Installing runs code from elsewhere on this machine, so, as in AUTOMATIC1111, it is refused
while the app listens on the network unless the admin started it with
`--enable-insecure-extension-access`; with a login, only admins may do it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from webui.extensions.manifest import Manifest, ManifestError

_SCHEMES = ("https", "http", "ssh", "git", "file")
_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:[\w./~-]+$")  # git@host:owner/repo.git
_CLONE_TIMEOUT_S = 300


class InstallError(ValueError):
    """The URL or the repository cannot be installed; the message says why."""


def install_refusal(listen: bool, allowed_flag: bool, is_admin: bool) -> str | None:
    """Why installing is refused for this caller, or None when it is allowed."""
    if listen and not allowed_flag:
        return (
            "installing extensions is off while the app listens on the network (--listen); "
            "start it with --enable-insecure-extension-access to allow admins to install"
        )
    if not is_admin:
        return "only an admin may install extensions"
    return None


def install_from_url(url: str, extensions_dir: Path, git: str = "git") -> Path:
    """Clone `url` into `extensions_dir/<repository name>`; its manifest is checked first.

    InstallError for an unsupported URL, a name already taken, a failed clone or a repository
    without a usable extension.toml. Nothing is left behind when it fails.
    """
    url = url.strip()
    name = _folder_name(url)
    target = extensions_dir / name
    if target.exists():
        raise InstallError(f"extensions/{name} already exists; remove it first to install again")
    if shutil.which(git) is None:
        raise InstallError("git is not installed on this machine")
    extensions_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=extensions_dir, prefix=".installing-") as temp:
        clone = Path(temp) / name
        try:
            subprocess.run(
                [git, "clone", "--depth", "1", "--", url, str(clone)],
                check=True,
                capture_output=True,
                text=True,
                timeout=_CLONE_TIMEOUT_S,
                env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},  # fail rather than ask for a password
            )
        except subprocess.TimeoutExpired:
            raise InstallError(f"git clone took longer than {_CLONE_TIMEOUT_S} s") from None
        except subprocess.CalledProcessError as error:
            detail = (error.stderr or "").strip().splitlines()
            raise InstallError(f"git clone failed: {detail[-1] if detail else error}") from None
        try:
            Manifest.read(clone)
        except ManifestError as error:
            raise InstallError(f"not an extension: {error}") from error
        clone.rename(target)
    return target


def _folder_name(url: str) -> str:
    parsed = urlparse(url)
    if not (parsed.scheme in _SCHEMES and (parsed.netloc or parsed.scheme == "file")) and not _SCP_LIKE.match(
        url
    ):
        raise InstallError(f"{url!r} is not a git URL (https://, ssh://, git@host:path or file://)")
    tail = url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    name = tail.removesuffix(".git")
    if not re.fullmatch(r"[\w.-]+", name) or name.startswith("."):
        raise InstallError(f"cannot make a folder name from {url!r}")
    return name

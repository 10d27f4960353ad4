"""Extensions over HTTP: the lists (A1111's and ours), installing from a URL, and the routes
extensions add under /api/v1/ext/<name>/ (behind the same login as every other route)."""

from __future__ import annotations

import configparser
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from webui.api.auth import caller_of
from webui.api.errors import ApiError, error_responses
from webui.extensions.install import InstallError, install_from_url, install_refusal
from webui.extensions.registry import Extension, Status

if TYPE_CHECKING:
    from webui.extensions.registry import Extensions
    from webui.studio import Studio


class InstallBody(BaseModel):
    url: str


def extensions_router(studio: Studio) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["extensions"])

    @router.get("/extensions", summary="Every extension folder: status, what it adds, its problems")
    def extensions() -> list[dict[str, Any]]:
        return [extension_info(extension) for extension in studio.extensions.extensions]

    @router.post(
        "/extensions/install",
        status_code=201,
        summary="Clone a git URL into extensions/ (admins; off with --listen unless allowed)",
        responses=error_responses(403),
    )
    async def install(request: Request, body: InstallBody) -> dict[str, Any]:
        settings = studio.settings
        refusal = install_refusal(
            settings.listen, settings.allow_extension_install, caller_of(request.state).admin
        )
        if refusal is not None:
            raise ApiError(403, refusal)
        try:
            folder = await run_in_threadpool(install_from_url, body.url, settings.data_dir / "extensions")
        except InstallError as error:
            raise ApiError(422, str(error), "url") from error
        return {
            "folder": folder.name,
            "message": f"installed into extensions/{folder.name}; restart to load it",
        }

    return router


def mount_extension_routes(app: FastAPI, extensions: Extensions) -> None:
    for extension, router in extensions.routers():
        # Their errors pass through our handlers: any 4xx is an ErrorBody.
        app.include_router(
            router,
            prefix=f"/api/v1/ext/{extension.name}",
            tags=[f"extension: {extension.name}"],
            responses=error_responses("4XX"),
        )


def extension_info(extension: Extension) -> dict[str, Any]:
    manifest = extension.manifest
    additions = extension.additions()
    return {
        "name": extension.name,
        "folder": extension.folder.name,
        "builtin": extension.builtin,
        "version": extension.version,
        "description": manifest.description if manifest else "",
        "status": extension.status,
        "enabled": extension.status != Status.DISABLED,
        "error": extension.error or None,
        "needs": {"webui": manifest.webui, "packages": list(manifest.packages)} if manifest else None,
        "scripts": additions["scripts"],
        "alwayson_scripts": additions["alwayson_scripts"],
        "tabs": additions["tabs"],
        "settings": additions["settings"],
        "route": additions["routes"][0] if additions["routes"] else None,
        "problems": extension.problems(),
    }


def a1111_extension_info(extension: Extension) -> dict[str, Any]:
    remote, commit = git_origin(extension.folder)
    return {
        "name": extension.name,
        "remote": remote,
        "branch": None,
        "commit_hash": commit,
        "commit_date": None,
        "version": extension.version,
        "enabled": extension.status == Status.LOADED,
    }


def git_origin(folder: Path) -> tuple[str | None, str | None]:
    """(origin URL, HEAD commit) of an extension installed with git, read from its .git folder."""
    git = folder / ".git"
    if not git.is_dir():
        return None, None
    config = configparser.ConfigParser(strict=False)
    try:
        config.read(git / "config", encoding="utf-8")
        head = (git / "HEAD").read_text(encoding="utf-8").strip()
    except (OSError, configparser.Error):
        return None, None
    remote = config.get('remote "origin"', "url", fallback=None)
    if head.startswith("ref: "):
        ref = head.removeprefix("ref: ")
        loose = git / ref
        if loose.is_file():
            return remote, loose.read_text(encoding="utf-8").strip()
        packed = git / "packed-refs"
        lines = packed.read_text(encoding="utf-8").splitlines() if packed.is_file() else []
        return remote, next((line.split()[0] for line in lines if line.endswith(f" {ref}")), None)
    return remote, head

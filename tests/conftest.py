"""Shared fixtures: tiny checkpoints of every architecture, written once per session."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from webui.model_manager.load import LoadedModel, load_model
from webui.tools.tiny_checkpoint import ARCHES, write_tiny_checkpoint

CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoints")
    for arch in ARCHES:
        write_tiny_checkpoint(arch, folder / f"tiny-{arch}.safetensors")
    return folder


@pytest.fixture(scope="session")
def tiny_model(tiny_dir: Path):
    """`tiny_model(arch)` -> a LoadedModel, loaded once per arch for the session."""
    loaded: dict[str, LoadedModel] = {}

    def get(arch: str) -> LoadedModel:
        if arch not in loaded:
            loaded[arch] = load_model(tiny_dir / f"tiny-{arch}.safetensors", CPU, torch.float32)
        return loaded[arch]

    return get


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Fail any attempt to open a network connection or resolve a host; records the attempts."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted during an offline test")

    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, address: refuse(address))
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.fixture(scope="session")
def server(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One real server with a login (alice is admin; bob, carol users) over tiny SD1.5 checkpoints."""
    from tests.http_helpers import live_server

    checkpoints = [tiny_dir / "tiny-sd15.safetensors", tiny_dir / "tiny-sd15-inpaint.safetensors"]
    with live_server(tmp_path_factory.mktemp("server"), checkpoints) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for the browser tests; one per test module."""
    from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS

    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()

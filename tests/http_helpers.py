"""A real server on a loopback port over tiny checkpoints, for the HTTP tests."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI
from PIL import Image

from webui.api.auth import Credentials
from webui.api.login_throttle import LoginLimits, ThrottleRule
from webui.api_client import sse_events
from webui.jobs import Job, JobQueue
from webui.server import BackgroundServer, Tls, create_app
from webui.settings import Settings
from webui.studio import Studio

# alice is the admin; bob and carol are ordinary users.
USERS = {"alice": "alice-Secret-1", "bob": "bob-Secret-2", "carol": "carol-Secret-3"}
AUTH_FLAG = ",".join(f"{user}:{password}" for user, password in USERS.items())
# The shared server's tests send many wrong passwords on purpose; tests of the throttle itself
# start their own server with the real LoginLimits().
UNTHROTTLED = LoginLimits(ThrottleRule(10**9, 1e-9), ThrottleRule(10**9, 1e-9))


class StepGate:
    """A step hook that can hold the worker inside a job, so tests can watch a running job."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self.reached = threading.Event()
        self.held_job: Job | None = None

    def close(self) -> None:
        self.reached.clear()
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    def __call__(self, job: Job, _info: object) -> None:
        if not self._open.is_set():
            self.held_job = job
            self.reached.set()
            self._open.wait(60)


@dataclass
class LiveServer:
    url: str
    studio: Studio
    jobs: JobQueue
    gate: StepGate
    data_dir: Path
    app: FastAPI

    def client(self, user: str | None = "bob", **kwargs: object) -> httpx.Client:
        auth = (user, USERS[user]) if user else None
        return httpx.Client(base_url=self.url, auth=auth, timeout=120, **kwargs)  # type: ignore[arg-type]


@contextmanager
def live_server(
    data_dir: Path,
    checkpoints: list[Path],
    *,
    auth: bool = True,
    tls: Tls | None = None,
    with_ui: bool = True,
    login_limits: LoginLimits = UNTHROTTLED,
) -> Iterator[LiveServer]:
    folder = data_dir / "models" / "Stable-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    for checkpoint in checkpoints:
        shutil.copy(checkpoint, folder / checkpoint.name)
    settings = Settings.for_data_dir(
        data_dir, ckpt=checkpoints[0].stem, watermark=False, device="cpu", precision="fp32"
    )
    studio = Studio(settings)
    gate = StepGate()
    jobs = JobQueue(studio, step_hooks=[gate]).start()
    credentials = Credentials.from_flags(AUTH_FLAG, None, "alice") if auth else None
    flags = {
        "auth": AUTH_FLAG if auth else None,
        "admin": "alice",
        "listen": False,
        "data_dir": str(data_dir),
    }
    app = create_app(
        studio, jobs, credentials=credentials, cmd_flags=flags, with_ui=with_ui, login_limits=login_limits
    )
    try:
        with BackgroundServer(app, tls=tls) as url:
            yield LiveServer(url, studio, jobs, gate, data_dir, app)
    finally:
        gate.open()
        jobs.stop()


@contextmanager
def served_without_login(studio: Studio) -> Iterator[str]:
    """`studio` behind its APIs alone (no page, no login) with its own queue, on a free port; its URL."""
    jobs = JobQueue(studio).start()
    try:
        with BackgroundServer(create_app(studio, jobs, credentials=None, cmd_flags={}, with_ui=False)) as url:
            yield url
    finally:
        jobs.stop()


def b64_png(image: Image.Image) -> str:
    stream = io.BytesIO()
    image.save(stream, format="PNG")
    return base64.b64encode(stream.getvalue()).decode()


def decode_png(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def read_events(client: httpx.Client, path: str) -> list[tuple[str, dict]]:
    with client.stream("GET", path) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = (line.encode() for line in stream.iter_lines())
        return [(name, json.loads(data)) for name, data in sse_events(lines)]

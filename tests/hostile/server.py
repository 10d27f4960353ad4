"""launch.py in a subprocess on loopback, with four logins and small limits; SIGKILL to stop."""

from __future__ import annotations

import base64
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
# alice is the admin; the others are ordinary users.
USERS = {
    "alice": "alice-Hostile-1",
    "bob": "bob-Hostile-2",
    "carol": "carol-Hostile-3",
    "dave": "dave-Hostile-4",
}
CHECKPOINT = "tiny-sd15"
LIMITS = ["--max-size", "128x128", "--max-steps", "8", "--max-batch-size", "2", "--max-batch-count", "4"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def basic(user: str, password: str | None = None) -> str:
    secret = USERS[user] if password is None else password
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Server:
    """One run of launch.py; `start` again on the same data dir after a kill."""

    data_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    starts: list[float] = field(default_factory=list)  # seconds each start took
    logs: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        self.port = free_port()
        env = {key: value for key, value in os.environ.items() if key != "WEBUI_AUTH"}
        env["OMP_NUM_THREADS"] = "1"  # two cores shared with the client
        log = self.data_dir / f"server-{len(self.logs)}.log"
        self.logs.append(log)
        logins = ",".join(f"{user}:{password}" for user, password in USERS.items())
        command = [sys.executable, str(REPO / "launch.py"), "--port", str(self.port)]
        command += ["--data-dir", str(self.data_dir), "--auth", logins, "--admin", "alice"]
        command += ["--device", "cpu", "--precision", "fp32", "--no-watermark", "--preview-method", "none"]
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command + LIMITS, cwd=self.data_dir, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def start(self, timeout: float = 180) -> None:
        began = time.monotonic()
        self.spawn()
        assert self.process is not None
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited at start:\n{self.logs[-1].read_text()[-3000:]}")
            if time.monotonic() - began > timeout:
                raise RuntimeError(f"server did not start:\n{self.logs[-1].read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/api/v1/me", auth=("alice", USERS["alice"]), timeout=5).is_success:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.starts.append(time.monotonic() - began)

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut (without the lost page cache) would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, user: str = "bob", **kwargs: object) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            auth=(user, USERS[user]),
            timeout=120,
            **kwargs,  # type: ignore[arg-type]
        )

    def raw(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        user: str | None = "bob",
        headers: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> Answer:
        """A request sent as written: the path is not normalised (httpx would drop `..`)."""
        sent = {"Content-Type": "application/json"} if body is not None else {}
        if user is not None:
            sent["Authorization"] = basic(user)
        sent.update(headers or {})
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            return Answer(response.status, response.read(), dict(response.getheaders()))
        finally:
            connection.close()

    def tracebacks(self) -> list[str]:
        """The first line after each Traceback in the server's logs (a crash, even if answered)."""
        found = []
        for log in self.logs:
            lines = log.read_text(errors="replace").splitlines()
            for index, line in enumerate(lines):
                if line.startswith("Traceback"):
                    tail = next((x for x in lines[index + 1 :] if x and not x.startswith(" ")), "?")
                    found.append(f"{log.name}: {tail[:200]}")
        return found

"""`python -m webui txt2img|img2img --server URL`: the command line as a client of a running app."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.http_helpers import USERS, LiveServer
from webui.api_client import parse_auth, split_credentials, sse_events
from webui.cli import main as cli_main
from webui.jobs import JobState
from webui.outputs import read_infotext

REPO = Path(__file__).resolve().parents[1]
TINY = ["--width", "64", "--height", "64", "--steps", "2"]
BOB = f"bob:{USERS['bob']}"
# Runs the CLI, then says which heavy modules it loaded: a --server run must load none of them.
IMPORT_PROBE = (
    "import sys\n"
    "from webui.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "heavy = [m for m in ('torch', 'diffusers', 'fastapi', 'webui.studio') if m in sys.modules]\n"
    "print('heavy modules:', heavy, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "WEBUI_AUTH"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webui", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png")) if folder.exists() else []


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _job_id(stderr: str) -> str:
    match = re.search(r"job (\w+) sent to", stderr)
    assert match, stderr
    return match.group(1)


class _LiveCli:
    """A CLI subprocess whose stderr is collected as it arrives, so a test can wait for progress."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "webui", *args],
            cwd=cwd,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        # read1: progress lines end in \r, not \n, so line-by-line reading would stall.
        while chunk := self.process.stderr.read1(4096):
            self._chunks.append(chunk)

    @property
    def stderr(self) -> str:
        return b"".join(self._chunks).decode()

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr:
            assert self.process.poll() is None, f"the CLI ended early: {self.stderr}"
            assert time.monotonic() < deadline, f"no {text!r} in {self.stderr!r}"
            time.sleep(0.05)

    def finish(self) -> int:
        code = self.process.wait(60)
        self._reader.join(10)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture(autouse=True)
def _no_login_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEBUI_AUTH", raising=False)


def test_txt2img_on_a_server_saves_the_png_here_as_bobs_job(server: LiveServer, tmp_path: Path) -> None:
    outputs = tmp_path / "elsewhere"
    run = _run(
        ["txt2img", "--server", server.url, "--server-auth", BOB, "--outputs-dir", str(outputs)]
        + ["-p", "a red kite", "--seed", "424242", *TINY],
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    [png] = _pngs(outputs)
    kind, day, name = png.relative_to(outputs).parts
    assert (kind, name) == ("txt2img-images", "00000-424242.png")
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", day)
    saved_line, infotext = run.stdout.rstrip("\n").split("\n", 1)
    assert saved_line == f"saved {png}"
    assert read_infotext(png) == infotext and "Seed: 424242" in infotext
    # Progress is sampled: a 2-step job may end before a step is shown, never before its place is.
    assert re.search(r"step \d/2|waiting in queue: position \d", run.stderr)
    assert _pngs(tmp_path / "outputs") == []  # --outputs-dir wins over ./outputs

    job_id = _job_id(run.stderr)
    with server.client("bob") as bob:
        mine = {job["id"]: job for job in bob.get("/api/v1/jobs").json()}
        assert mine[job_id]["owner"] == "bob"
        assert bob.get(f"/api/v1/jobs/{job_id}/images/0").content == png.read_bytes()  # bytes as sent
    with server.client("carol") as carol:
        assert carol.get(f"/api/v1/jobs/{job_id}").status_code == 404
    assert not [p for p in _pngs(server.data_dir / "outputs") if p.name.endswith("-424242.png")]  # not asked
    # (a seed no other test of the shared server uses, so only this job could have saved it)


def test_files_are_numbered_after_the_highest_one_in_the_day_folder(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "outputs" / "txt2img-images" / time.strftime("%Y-%m-%d")
    folder.mkdir(parents=True)
    (folder / "00041-7.png").write_bytes(b"")
    args = ["txt2img", "--server", server.url, "--server-auth", BOB, "--data-dir", str(tmp_path)]
    code = cli_main(args + ["-p", "two", "--seed", "20", "--batch-size", "2", *TINY])
    assert code == 0, capsys.readouterr().err
    assert [p.name for p in _pngs(folder)] == ["00041-7.png", "00042-20.png", "00043-21.png"]


def test_img2img_with_a_mask_on_a_server(
    server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    Image.new("RGB", (64, 64), "teal").save(tmp_path / "in.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (10, 10, 30, 30))
    mask.save(tmp_path / "mask.png")
    monkeypatch.setenv("WEBUI_AUTH", BOB)  # the fallback login
    code = cli_main(
        ["img2img", "--server", server.url, "--data-dir", str(tmp_path), "--ckpt", "tiny-sd15-inpaint"]
        + [
            "-p",
            "a door",
            *TINY,
            "--init-image",
            str(tmp_path / "in.png"),
            "--mask",
            str(tmp_path / "mask.png"),
        ]
        + ["--mask-blur", "3", "--denoising-strength", "0.6"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    [png] = _pngs(tmp_path / "outputs")
    assert png.parent.parent.name == "img2img-images"
    infotext = read_infotext(png)
    assert infotext is not None and infotext in captured.out
    assert "Mask blur: 3" in infotext and "Denoising strength: 0.6" in infotext


def test_a_login_in_the_url_works_and_no_login_is_refused(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_login = server.url.replace("://", f"://{BOB}@")
    assert cli_main(["txt2img", "--server", with_login, "--data-dir", str(tmp_path), "-p", "x", *TINY]) == 0
    assert len(_pngs(tmp_path / "outputs")) == 1
    capsys.readouterr()

    code = cli_main(["txt2img", "--server", server.url, "--data-dir", str(tmp_path), "-p", "x", *TINY])
    err = capsys.readouterr().err
    assert code == 2
    assert "login required (401)" in err and "--server-auth" in err

    wrong = ["--server-auth", "bob:not-the-password"]
    code = cli_main(
        ["txt2img", "--server", server.url, *wrong, "--data-dir", str(tmp_path), "-p", "x", *TINY]
    )
    assert code == 2 and "check the user name and password" in capsys.readouterr().err
    assert len(_pngs(tmp_path / "outputs")) == 1


def test_an_invalid_request_exits_2_naming_the_field(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["txt2img", "--server", server.url, "--server-auth", BOB, "--data-dir", str(tmp_path), "-p", "x"]
    code = cli_main(args + [*TINY, "--width", "63"])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: width must be a multiple of 8" in err and "(field width, flag --width)" in err
    assert cli_main(args + [*TINY, "--ckpt", "no-such-model"]) == 2
    assert "no-such-model" in capsys.readouterr().err
    assert _pngs(tmp_path) == []


def test_an_unreachable_server_exits_1_without_loading_torch(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    run = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, "txt2img", "--server", url, "-p", "x"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert f"cannot reach {url}" in run.stderr
    assert "heavy modules: []" in run.stderr


def test_local_only_flags_are_refused_with_server(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["txt2img", "--server", "http://127.0.0.1:1", "-p", "x", "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "--device applies to the local engine" in capsys.readouterr().err


def test_ckpt_picks_the_servers_checkpoint_for_the_job(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["txt2img", "--server", server.url, "--server-auth", BOB, "--data-dir", str(tmp_path)]
    assert cli_main(args + ["--ckpt", "tiny-sd15-inpaint", "-p", "x", *TINY]) == 0
    [png] = _pngs(tmp_path / "outputs")
    assert "Model: tiny-sd15-inpaint" in read_infotext(png)
    assert "Model: tiny-sd15-inpaint" in capsys.readouterr().out


def test_ctrl_c_cancels_the_job_on_the_server_and_exits_130(server: LiveServer, tmp_path: Path) -> None:
    server.gate.close()  # hold the worker inside the job, so it is surely running when Ctrl+C comes
    cli = _LiveCli(["txt2img", "--server", server.url, "--server-auth", BOB, "-p", "x", *TINY], tmp_path)
    try:
        assert server.gate.reached.wait(60)
        cli.wait_for("step 1/2")  # the CLI follows the job's events by now
        cli.process.send_signal(signal.SIGINT)
        assert cli.finish() == 130
        assert "cancelled job" in cli.stderr
    finally:
        server.gate.open()
        cli.kill()
    held = server.gate.held_job
    assert held is not None and held.owner == "bob" and held.id == _job_id(cli.stderr)
    assert held.wait(60) and held.state is JobState.INTERRUPTED


def test_a_job_cancelled_while_waiting_exits_3(server: LiveServer, tmp_path: Path) -> None:
    server.gate.close()
    blocker_body = {"prompt": "first", "width": 64, "height": 64, "steps": 2, "save_images": False}
    cli: _LiveCli | None = None
    with server.client("bob") as bob, server.client("carol") as carol:
        try:
            blocker = bob.post("/api/v1/jobs/txt2img", json=blocker_body).json()["id"]
            assert server.gate.reached.wait(60)
            cli = _LiveCli(
                ["txt2img", "--server", server.url, "--server-auth", f"carol:{USERS['carol']}", "-p", "x"]
                + TINY,
                tmp_path,
            )
            cli.wait_for("waiting in queue: position 1")
            assert carol.post(f"/api/v1/jobs/{_job_id(cli.stderr)}/cancel").status_code == 200
            assert cli.finish() == 3
            assert "was interrupted" in cli.stderr
        finally:
            server.gate.open()
            if cli is not None:
                cli.kill()
        assert _pngs(tmp_path) == []
        deadline = time.monotonic() + 60  # let the blocker finish before the next test queues
        while bob.get(f"/api/v1/jobs/{blocker}").json()["state"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_server_addresses_logins_and_event_streams_parse() -> None:
    assert split_credentials("http://bob:p%40ss:w@example.org:7860/sd/") == (
        "http://example.org:7860/sd",
        ("bob", "p@ss:w"),
    )
    assert split_credentials("127.0.0.1:7860") == ("http://127.0.0.1:7860", None)
    assert split_credentials("https://[::1]:8443") == ("https://[::1]:8443", None)
    assert parse_auth("carol:a:b") == ("carol", "a:b")
    with pytest.raises(ValueError):
        parse_auth("carol")
    stream = [b": keep-alive\n", b"\n", b"event: progress\n", b'data: {"a":\n', b"data: 1}\n", b"\n"]
    stream += [b"event: done\r\n", b"data: {}\r\n", b"\r\n"]
    assert list(sse_events(stream)) == [("progress", '{"a":\n1}'), ("done", "{}")]

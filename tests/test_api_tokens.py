"""API tokens: made, listed and revoked by their user, stored hashed, taken as Bearer logins everywhere."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.http_helpers import LiveServer, live_server
from webui.api.login_throttle import LoginLimits, ThrottleRule
from webui.api.tokens import FILE_NAME, TokenStore

REPO = Path(__file__).resolve().parents[1]


def _bearer(server: LiveServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=120)


def test_a_user_makes_lists_and_revokes_tokens(server: LiveServer) -> None:
    with server.client("bob") as bob:
        made = bob.post("/api/v1/tokens", json={"name": "my agent"})
        assert made.status_code == 201
        token, token_id = made.json()["token"], made.json()["id"]
        assert token.startswith(f"sdw_{token_id}_") and len(token) > 40
        listed = bob.get("/api/v1/tokens").json()
        mine = [entry for entry in listed if entry["id"] == token_id]
        assert mine and mine[0]["name"] == "my agent" and "token" not in mine[0]
        assert token not in bob.get("/api/v1/tokens").text
    # Only its hash is on disk.
    stored = (server.data_dir / FILE_NAME).read_text()
    assert token not in stored and hashlib.sha256(token.encode()).hexdigest() in stored

    with _bearer(server, token) as agent:
        assert agent.get("/api/v1/me").json() == {"user": "bob", "admin": False}
        assert agent.get("/sdapi/v1/options").status_code == 200  # the A1111 API takes it too
        # A leaked token cannot mint more tokens, nor see or revoke the others.
        assert agent.post("/api/v1/tokens", json={}).status_code == 403
        assert agent.get("/api/v1/tokens").status_code == 403
    with server.client("carol") as carol:
        assert carol.delete(f"/api/v1/tokens/{token_id}").status_code == 404  # not hers
    with _bearer(server, token) as agent:
        assert agent.get("/api/v1/me").status_code == 200
    with server.client("bob") as bob:
        assert bob.delete(f"/api/v1/tokens/{token_id}").json() == {"revoked": token_id}
        assert bob.delete(f"/api/v1/tokens/{token_id}").status_code == 404
    with _bearer(server, token) as agent:
        assert agent.get("/api/v1/me").status_code == 401


def test_wrong_malformed_and_orphaned_tokens_get_401(server: LiveServer) -> None:
    with server.client("carol") as carol:
        token = carol.post("/api/v1/tokens", json={"name": "x"}).json()["token"]
    # A user no longer in --auth loses their tokens with their login.
    orphan, _info = TokenStore.in_data_dir(server.data_dir).create("mallory")
    for wrong in (token[:-2] + "zz", "sdw_0123456789ab_nope", "garbage", orphan):
        with _bearer(server, wrong) as agent:
            answer = agent.get("/api/v1/me")
            assert answer.status_code == 401, wrong
            assert "error" in answer.json()
    with _bearer(server, token) as agent:
        assert agent.get("/api/v1/me").json()["user"] == "carol"


def test_bad_token_names_are_refused(server: LiveServer) -> None:
    with server.client("bob") as bob:
        assert bob.post("/api/v1/tokens", json={"name": "x" * 101}).status_code == 422
        assert bob.post("/api/v1/tokens", json={"name": "tab\there"}).status_code == 422
        assert (
            bob.post("/api/v1/tokens", content=b"{", headers={"content-type": "application/json"}).status_code
            == 400
        )


def test_wrong_tokens_are_throttled_like_passwords(tiny_dir: Path, tmp_path: Path) -> None:
    limits = LoginLimits(per_user=ThrottleRule(burst=2, refill_s=600), per_address=ThrottleRule(100, 600))
    checkpoints = [tiny_dir / "tiny-sd15.safetensors"]
    with live_server(tmp_path, checkpoints, with_ui=False, login_limits=limits) as running:
        token, _info = TokenStore.in_data_dir(tmp_path).create("bob")
        guess = token[:-4] + "AAAA"
        with _bearer(running, guess) as guesser:
            codes = [guesser.get("/api/v1/me").status_code for _ in range(3)]
        assert codes == [401, 401, 429]
        # Guessing at one token id does not lock out the owner's other tokens.
        other, _info = TokenStore.in_data_dir(tmp_path).create("bob")
        with _bearer(running, other) as agent:
            assert agent.get("/api/v1/me").status_code == 200


def test_no_tokens_without_a_login(tiny_dir: Path, tmp_path: Path) -> None:
    checkpoints = [tiny_dir / "tiny-sd15.safetensors"]
    with (
        live_server(tmp_path, checkpoints, auth=False, with_ui=False) as running,
        running.client(None) as anyone,
    ):
        answer = anyone.post("/api/v1/tokens", json={})
    assert answer.status_code == 403 and "no login" in answer.json()["detail"]


def test_the_owner_makes_a_token_from_the_command_line(server: LiveServer) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        command = [sys.executable, "-m", "webui", "token", *args, "--data-dir", str(server.data_dir)]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=REPO)

    made = run("create", "alice", "--name", "ci")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("sdw_")
    # The running server reads the file again: the new token works at once.
    with _bearer(server, token) as agent:
        assert agent.get("/api/v1/me").json() == {"user": "alice", "admin": True}
    listed = run("list", "alice")
    token_id = token.split("_")[1]
    assert token_id in listed.stdout and token not in listed.stdout
    assert run("revoke", "alice", token_id).returncode == 0
    with _bearer(server, token) as agent:
        assert agent.get("/api/v1/me").status_code == 401
    missing = run("revoke", "alice", token_id)
    assert missing.returncode == 1 and "no token" in missing.stderr


@pytest.mark.parametrize("text", ["{", '{"tokens": [{"id": 1}]}'])
def test_an_unreadable_token_file_refuses_tokens_not_the_server(tmp_path: Path, text: str) -> None:
    store = TokenStore.in_data_dir(tmp_path)
    token, _info = store.create("bob")
    (tmp_path / FILE_NAME).write_text(text)
    assert store.user_of(token) is None

"""Login on a shared server: every route refuses strangers, secrets never leak, HTTPS works."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from starlette.routing import Mount, WebSocketRoute

import launch
from tests.http_helpers import USERS, LiveServer, live_server
from webui.api.auth import Credentials
from webui.jobs import Caller
from webui.server import Tls

_PARAM = re.compile(r"\{([^}:]+)(:[^}]+)?\}")


def route_table(app: object, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method or "WEBSOCKET", concrete path) for every route of the app and of everything mounted in it."""
    for route in getattr(app, "routes", []):
        if isinstance(route, Mount):
            inner = route.app
            if getattr(inner, "routes", None):
                yield from route_table(inner, prefix + route.path)
            else:  # static files and other leaf apps
                yield "GET", prefix + route.path + "/some-file"
        elif isinstance(route, WebSocketRoute):
            yield "WEBSOCKET", prefix + _concrete(route.path)
        elif hasattr(route, "effective_route_contexts"):  # FastAPI's included routers
            for context in route.effective_route_contexts():
                inner = context.starlette_route or context.original_route
                for method in getattr(inner, "methods", None) or ["GET"]:
                    yield method, prefix + _concrete(context.path)
        else:
            for method in getattr(route, "methods", None) or ["GET"]:
                yield method, prefix + _concrete(route.path)


def _concrete(path: str) -> str:
    return _PARAM.sub(lambda m: "0" if m.group(1) in ("index", "size") else "x", path) or "/"


def test_every_route_refuses_a_request_without_credentials(server: LiveServer) -> None:
    routes = sorted(set(route_table(server.app)))
    paths = {path for _, path in routes}
    # The walk must really cover the app: both APIs, the docs, the page, Gradio's queue and files.
    for expected in (
        "/sdapi/v1/txt2img",
        "/sdapi/v1/progress",
        "/api/v1/jobs/x/events",
        "/docs",
        "/openapi.json",
        "/",
        "/gradio_api/queue/join",
        "/gradio_api/file=x",
        "/gradio_api/upload",
    ):
        assert expected in paths, expected
    assert len(routes) > 100
    http_routes = [(m, p) for m, p in routes if m != "WEBSOCKET"] + [("GET", "/no/such/route")]

    def status(method: str, path: str, auth: tuple[str, str] | None) -> tuple[str, str, int]:
        with httpx.Client(base_url=server.url, auth=auth, timeout=60) as client:
            return method, path, client.request(method, path).status_code

    with ThreadPoolExecutor(max_workers=32) as pool:
        anonymous = list(pool.map(lambda r: status(*r, None), http_routes))
        wrong = list(pool.map(lambda r: status(*r, ("bob", "not-bobs-password")), http_routes))
    for method, path, code in anonymous + wrong:
        assert code == 401, f"{method} {path} answered {code}"
    for _method, path in [r for r in routes if r[0] == "WEBSOCKET"] + [
        ("WEBSOCKET", "/gradio_api/queue/join")
    ]:
        # 403: the handshake refused; 401: uvicorn without a websocket library served it as plain HTTP.
        assert _websocket_status(server.url, path) in (401, 403), path


def _websocket_status(url: str, path: str) -> int:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        return int(sock.recv(1024).split(b" ")[1])


def test_the_login_lets_users_in_everywhere(server: LiveServer) -> None:
    with server.client("carol") as client:
        assert client.get("/").status_code == 200
        assert client.get("/config").status_code == 200
        assert client.get("/docs").status_code == 200
        assert client.get("/sdapi/v1/sd-models").status_code == 200
        answer = client.post("/api/v1/jobs/txt2img", json={"steps": 1, "width": 64, "height": 64}).json()
        saved = server.jobs.get(answer["id"], Caller("carol"))
        assert saved.wait(60)
        path = saved.result.paths[0].resolve()
        assert client.get(f"/gradio_api/file={path}").status_code == 200
    with httpx.Client(base_url=server.url, timeout=60) as anonymous:
        assert anonymous.get(f"/gradio_api/file={path}").status_code == 401
        assert anonymous.get("/").headers["www-authenticate"].startswith("Basic ")


def test_no_answer_contains_a_password(server: LiveServer) -> None:
    gets = sorted({p for m, p in route_table(server.app) if m == "GET" and "x" not in p.split("/")})
    with server.client("alice") as client:
        for path in gets:
            if path.startswith(("/static", "/assets", "/svelte", "/gradio_api/file", "/gradio_api/proxy")):
                continue
            with client.stream("GET", path, timeout=5) as response:
                if response.headers.get("content-type", "").startswith("text/event-stream"):
                    continue  # Gradio's live streams need a session; they carry event data only
                text = response.read().decode("utf-8", errors="replace")
            for password in USERS.values():
                assert password not in text, path
        flags = client.get("/sdapi/v1/cmd-flags").json()
    assert flags["auth"] == "<hidden>"


def test_credentials_from_flags_and_files(tmp_path: Path) -> None:
    assert Credentials.from_flags(None, None) is None
    both = tmp_path / "logins.txt"
    both.write_text("# team\ncarol:pass:with:colons\n\ndave:d,comma\n", encoding="utf-8")
    credentials = Credentials.from_flags("alice:a1,bob:b2", both, "alice")
    assert credentials.passwords == {
        "alice": "a1",
        "bob": "b2",
        "carol": "pass:with:colons",
        "dave": "d,comma",
    }
    assert credentials.admins == {"alice"}
    for bad in ("alice", "alice:", ":pw"):
        with pytest.raises(ValueError, match="user:password"):
            Credentials.from_flags(bad, None)
    with pytest.raises(ValueError, match="--admin"):
        Credentials.from_flags("alice:a1", None, "mallory")
    with pytest.raises(ValueError, match="no-such-file"):
        Credentials.from_flags(None, tmp_path / "no-such-file")


def test_launch_refuses_bad_server_flags_before_loading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--data-dir", str(tmp_path)]
    assert launch.main([*base, "--auth", "alice"]) == 2
    assert "user:password" in capsys.readouterr().err
    assert launch.main([*base, "--tls-keyfile", str(tmp_path / "key.pem")]) == 2
    assert "--tls-certfile" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_https_with_a_certificate(tiny_dir: Path, tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    trust = ssl.create_default_context(cafile=str(cert))
    with live_server(
        tmp_path / "data", [tiny_dir / "tiny-sd15.safetensors"], tls=Tls(key, cert), with_ui=False
    ) as srv:
        assert srv.url.startswith("https://")
        with httpx.Client(base_url=srv.url, verify=trust, auth=("bob", USERS["bob"]), timeout=60) as client:
            assert client.get("/api/v1/me").json()["user"] == "bob"
        with httpx.Client(base_url=srv.url, verify=trust, timeout=60) as anonymous:
            assert anonymous.get("/api/v1/me").status_code == 401
        with pytest.raises(httpx.HTTPError):
            httpx.get(srv.url.replace("https://", "http://") + "/api/v1/me", timeout=10)

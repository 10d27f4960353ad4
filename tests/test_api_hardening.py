"""Issue 20: request input, files and login on a shared server, over real HTTP."""

from __future__ import annotations

import base64
import io
import logging
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from tests.browser_helpers import CHROMIUM, TIMEOUT_MS, generate_and_wait, open_tab, small_job
from tests.http_helpers import USERS, LiveServer, b64_png, decode_png, live_server
from webui.api.auth import Credentials
from webui.api.login_throttle import LoginLimits
from webui.api.passwords import hash_password, verify
from webui.engine.preview import vae_decode
from webui.engine.request import GenerationError, GenerationRequest
from webui.jobs import Caller
from webui.styles import Style
from webui.tools import hash_password as hash_tool


def _body(fields: str) -> str:
    """A small txt2img body as raw JSON text (NaN, Infinity and lone surrogates included)."""
    return "{" + fields + ', "steps": 1, "width": 64, "height": 64}'


BAD_BODIES = [
    _body('"prompt": "\\ud800"'),
    _body('"negative_prompt": "a \\udfff b"'),
    _body('"styles": ["\\ud800"]'),
    _body('"cfg_scale": NaN'),
    _body('"eta": Infinity'),
    _body('"eta": 1e308'),
    _body('"enable_hr": true, "hr_scale": 1e308'),
    _body('"enable_hr": true, "hr_scale": NaN'),
    _body('"denoising_strength": NaN, "enable_hr": true'),
    _body('"subseed_strength": -Infinity'),
    _body('"override_settings": {"CLIP_stop_at_last_layers": NaN}'),
    _body('"override_settings": {"CLIP_stop_at_last_layers": Infinity}'),
    _body('"alwayson_scripts": {"x": {"args": [NaN]}}'),
    _body('"script_args": ["\\ud800"]'),
]


@pytest.mark.parametrize("path", ["/api/v1/jobs/txt2img", "/sdapi/v1/txt2img"])
def test_lone_surrogates_and_non_finite_numbers_are_refused(server: LiveServer, path: str) -> None:
    with server.client("bob") as client, server.client("alice") as admin:
        for body in BAD_BODIES:
            answer = client.post(path, content=body, headers={"content-type": "application/json"})
            assert answer.status_code == 422, (body, answer.text)
            assert answer.json()["detail"], body
        assert client.get("/api/v1/jobs").status_code == 200
        assert admin.get("/api/v1/jobs", params={"everyone": True}).status_code == 200
        assert client.get("/sdapi/v1/progress").status_code == 200


def test_the_page_and_the_queue_refuse_them_too(server: LiveServer) -> None:
    """The page submits GenerationRequests to the same queue and shows the GenerationError."""
    for bad in (
        GenerationRequest(prompt="\ud800", steps=1, width=64, height=64),
        GenerationRequest(cfg_scale=float("nan"), steps=1, width=64, height=64),
        GenerationRequest(eta=float("inf"), steps=1, width=64, height=64),
        GenerationRequest(enable_hr=True, hr_scale=1e308, steps=1, width=64, height=64),
    ):
        with pytest.raises(GenerationError):
            server.jobs.submit(bad, Caller("bob"))


def test_an_image_that_comes_out_nan_fails_instead_of_saving_black(tiny_model) -> None:
    model = tiny_model("sd15")
    with pytest.raises(GenerationError, match="NaN"):
        vae_decode(model, torch.full((1, 4, 8, 8), float("nan")))


def test_prompts_over_the_limit_are_refused(server: LiveServer) -> None:
    long = "a" * (server.jobs.limits.max_prompt_chars + 1)
    style = Style("issue20-long", "x" * server.jobs.limits.max_prompt_chars + " {prompt}", "")
    server.studio.styles.save(style)
    try:
        with server.client("bob") as client:
            for path in ("/api/v1/jobs/txt2img", "/sdapi/v1/txt2img"):
                for body in (
                    {"prompt": long},
                    {"negative_prompt": long},
                    {"prompt": "a cat", "styles": [style.name]},
                ):
                    answer = client.post(path, json={**body, "steps": 1, "width": 64, "height": 64})
                    assert answer.status_code == 422, (path, body.keys())
                    assert "--max-prompt-chars" in answer.json()["detail"]
                    assert answer.json()["limit"] == "--max-prompt-chars"
    finally:
        server.studio.styles.delete(style.name)


def test_cmd_flags_hide_admin_names_from_users(server: LiveServer) -> None:
    with server.client("bob") as client:
        assert client.get("/sdapi/v1/cmd-flags").json()["admin"] == "<hidden>"
    with server.client("alice") as admin:
        assert admin.get("/sdapi/v1/cmd-flags").json()["admin"] == "alice"


def test_saved_images_are_served_to_their_owner_only(server: LiveServer) -> None:
    with server.client("bob") as bob, server.client("carol") as carol, server.client("alice") as alice:
        answer = bob.post("/api/v1/jobs/txt2img", json={"steps": 1, "width": 64, "height": 64}).json()
        job = server.jobs.get(answer["id"], Caller("bob"))
        assert job.wait(60)
        path = job.result.paths[0].resolve()
        relative = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
        for route in (f"/gradio_api/file={path}", f"/gradio_api/file/{path}", f"/gradio_api/file={relative}"):
            assert bob.get(route).status_code == 200, route
            assert alice.get(route).status_code == 200, route
            assert carol.get(route).status_code == 404, route
            assert carol.head(route).status_code == 404, route
        images = f"/api/v1/jobs/{answer['id']}/images/0"
        assert bob.get(images).status_code == 200
        assert carol.get(images).status_code == 404
        assert carol.get(f"/api/v1/jobs/{answer['id']}/preview").status_code == 404


def test_a_stalled_request_body_is_dropped(server: LiveServer) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    login = base64.b64encode(f"bob:{USERS['bob']}".encode()).decode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            (
                f"POST /api/v1/jobs/txt2img HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {login}\r\n"
                'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"prompt": '
            ).encode()
        )
        started = time.monotonic()
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert waited < 10


def test_gradio_queue_data_with_an_unknown_session_is_a_clean_4xx(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR), server.client("bob") as client:
        answer = client.get("/gradio_api/queue/data", params={"session_hash": "no-such-session"}, timeout=10)
    assert 400 <= answer.status_code < 500
    assert not [record for record in caplog.records if record.exc_info], caplog.text


def test_whole_picture_inpainting_answers_the_requested_size(server: LiveServer) -> None:
    """As A1111: "only masked" (inpaint_full_res) pastes back into the init image at its size."""
    init = Image.new("RGB", (96, 64), (120, 30, 30))
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (30, 20, 60, 44))
    body = {
        "init_images": [b64_png(init)],
        "mask": b64_png(mask),
        "inpaint_full_res": False,
        "steps": 1,
        "width": 64,
        "height": 128,
        "override_settings": {"sd_model_checkpoint": "tiny-sd15-inpaint"},
    }
    with server.client("bob") as client:
        answer = client.post("/sdapi/v1/img2img", json=body)
    assert answer.status_code == 200, answer.text
    assert decode_png(answer.json()["images"][0]).size == (64, 128)


# -- logins ---------------------------------------------------------------------------------------


def _from(address: str) -> httpx.HTTPTransport:
    """Requests from another loopback address: every 127.x.y.z is this machine on Linux."""
    return httpx.HTTPTransport(local_address=address)


def _status(url: str, user: str, password: str, address: str = "127.0.0.1") -> httpx.Response:
    with httpx.Client(base_url=url, auth=(user, password), transport=_from(address), timeout=30) as client:
        return client.get("/api/v1/me")


@pytest.mark.skipif(sys.platform != "linux", reason="needs the whole 127.0.0.0/8 on loopback")
def test_login_guessing_is_throttled_per_user_and_per_address(tiny_dir: Path, tmp_path: Path) -> None:
    with live_server(
        tmp_path / "data", [tiny_dir / "tiny-sd15.safetensors"], with_ui=False, login_limits=LoginLimits()
    ) as srv:
        # carol uses the server from her own address before the attack.
        assert _status(srv.url, "carol", USERS["carol"], "127.0.0.5").status_code == 200
        # 100 wrong passwords for carol, 20 at a time from one address.
        with ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(lambda i: _status(srv.url, "carol", f"guess-{i}"), range(100)))
        codes = [answer.status_code for answer in answers]
        assert codes.count(401) <= 10 and codes.count(429) >= 90, codes
        throttled = next(answer for answer in answers if answer.status_code == 429)
        assert int(throttled.headers["retry-after"]) > 0
        # The right password for carol from elsewhere is throttled too: guessing gains nothing ...
        assert _status(srv.url, "carol", USERS["carol"], "127.0.0.6").status_code == 429
        # ... but carol from the address she used before, and other users, get in.
        assert _status(srv.url, "carol", USERS["carol"], "127.0.0.5").status_code == 200
        assert _status(srv.url, "bob", USERS["bob"], "127.0.0.2").status_code == 200
        assert _status(srv.url, "bob", USERS["bob"]).status_code == 200
        # Guessing over many names from one address stops at the address's limit (30, + refills).
        sprayed = [_status(srv.url, f"user{i}", "guess", "127.0.0.3").status_code for i in range(40)]
        assert sprayed.count(401) <= 32 and sprayed[-1] == 429, sprayed
        assert _status(srv.url, "bob", USERS["bob"], "127.0.0.3").status_code == 429
        assert _status(srv.url, "bob", USERS["bob"], "127.0.0.2").status_code == 200
        # X-Forwarded-For (uvicorn trusts it from 127.0.0.1 by default) does not choose the
        # address that is counted: the peer's is.
        with httpx.Client(base_url=srv.url, transport=_from("127.0.0.1"), timeout=30) as client:

            def forged(i: int) -> int:
                headers = {"X-Forwarded-For": f"10.0.0.{i}"}
                return client.get("/api/v1/me", auth=(f"name{i}", "guess"), headers=headers).status_code

            with ThreadPoolExecutor(max_workers=20) as pool:
                codes = list(pool.map(forged, range(60)))
        assert codes.count(429) >= 20, codes


def test_hashed_passwords_in_the_auth_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret pass\n"))
    assert hash_tool.main(["--user", "dave", "--iterations", "1000"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("dave:pbkdf2_sha256$1000$") and "s3cret" not in line
    logins = tmp_path / "logins.txt"
    logins.write_text(f"{line}\nerin:plain-pass\n", encoding="utf-8")
    credentials = Credentials.from_flags(None, logins, "dave")
    assert credentials is not None

    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    assert credentials.authenticate(basic("dave", "s3cret pass")) == Caller("dave", admin=True)
    assert credentials.authenticate(basic("dave", "s3cret pass")) == Caller("dave", admin=True)  # remembered
    assert credentials.authenticate(basic("dave", "s3cret pas")) is None
    assert credentials.authenticate(basic("erin", "plain-pass")) == Caller("erin")
    assert credentials.authenticate(basic("nobody", "s3cret pass")) is None
    stored = hash_password("pw", 1000, salt="salt")
    assert verify("pw", stored) and not verify("pw2", stored)
    for broken in ("pbkdf2_sha256$x$salt$abc", "pbkdf2_sha256$1000$salt$not-base64!", "pbkdf2_sha256$10$s$"):
        logins.write_text(f"dave:{broken}\n", encoding="utf-8")
        with pytest.raises(ValueError, match="dave"):
            Credentials.from_flags(None, logins)


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install -y chromium)")
def test_the_page_still_shows_a_user_their_own_images(server: LiveServer, browser, tmp_path: Path) -> None:
    """The file routes now check owners: a non-admin's own results and extras must still show
    (Gradio shows them from its cache, named by a hash of their content)."""
    context = browser.new_context(
        viewport={"width": 1280, "height": 900},
        http_credentials={"username": "carol", "password": USERS["carol"]},
    )
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(server.url + "/")
        page.locator("#txt2img-prompt textarea").wait_for()
        small_job(page, "txt2img", "a red square", steps="1")
        generate_and_wait(page)  # waits for the gallery's image to load
        source = tmp_path / "small.png"
        Image.new("RGB", (64, 64), (0, 90, 200)).save(source)
        open_tab(page, "Extras")
        page.locator("#extras-image input[type=file]").set_input_files(str(source))
        page.locator("#extras-image img").wait_for()
        page.locator("#extras-run").click()
        page.wait_for_function(
            "() => { const img = document.querySelector('#extras-gallery img');"
            " return img && img.complete && img.naturalWidth === 128; }"
        )
    finally:
        context.close()


def test_non_finite_numbers_elsewhere_are_refused(server: LiveServer) -> None:
    json_body = {"content-type": "application/json"}
    with server.client("alice") as admin:
        for body in ('{"max_steps": Infinity}', '{"max_body_mb": NaN}', '{"CLIP_stop_at_last_layers": NaN}'):
            answer = admin.post("/sdapi/v1/options", content=body, headers=json_body)
            assert answer.status_code == 422, (body, answer.text)
        assert admin.get("/sdapi/v1/options").json()["max_steps"] == server.jobs.limits.max_steps
        image = b64_png(Image.new("RGB", (8, 8)))
        answer = admin.post(
            "/sdapi/v1/extra-single-image",
            content=f'{{"image": "{image}", "upscaling_resize": NaN}}',
            headers=json_body,
        )
        assert answer.status_code == 422, answer.text
        answer = admin.post("/api/v1/train", content='{"name": "x\\ud800", "steps": 1}', headers=json_body)
        assert answer.status_code == 422, answer.text


def test_what_the_hostile_run_found_is_a_clean_answer(server: LiveServer) -> None:
    """docs/reliability.md: a CMYK JPEG (a 500 where it was written as PNG), a NUL byte in a file
    route (os.path raised) and JSON nested 100,000 deep on the OpenAI route (RecursionError)."""
    stream = io.BytesIO()
    Image.new("CMYK", (64, 64), (0, 200, 200, 0)).save(stream, format="JPEG")
    cmyk = base64.b64encode(stream.getvalue()).decode()
    small = {"steps": 1, "width": 64, "height": 64}
    with server.client("bob") as bob, server.client("alice") as alice:
        for path, body in (
            ("/sdapi/v1/img2img", {**small, "init_images": [cmyk]}),
            ("/api/v1/jobs/img2img", {**small, "init_images": [cmyk]}),
            ("/sdapi/v1/extra-single-image", {"image": cmyk, "upscaling_resize": 1}),
            ("/sdapi/v1/png-info", {"image": cmyk}),
        ):
            answer = bob.post(path, json=body)
            assert answer.status_code in (200, 202), (path, answer.text)
        for client in (bob, alice):
            for route in ("/gradio_api/file=a%00.png", "/gradio_api/file/x%00.png", "/file=%00"):
                assert client.get(route).status_code == 404, route
        nested = '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}"
        answer = bob.post(
            "/v1/images/generations", content=nested, headers={"content-type": "application/json"}
        )
        assert answer.status_code == 400, answer.text

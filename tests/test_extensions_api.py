"""Extensions over real HTTP: the lists, scripts and always-on scripts through A1111's API,
extension routes behind the login, installing, and a broken extension that leaves jobs working."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.extension_helpers import (
    COLORS,
    commit_as_git_repository,
    install_example_and_raising,
    write_extension,
)
from tests.http_helpers import LiveServer, decode_png, live_server, read_events
from webui.outputs import parse_infotext


@pytest.fixture(scope="module")
def ext_server(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("ext-server")
    extensions = data_dir / "extensions"
    install_example_and_raising(extensions)
    write_extension(extensions, "broken", "def setup(ext)\n")
    with live_server(data_dir, [tiny_dir / "tiny-sd15.safetensors"], with_ui=False) as server:
        yield server


def _txt2img(server: LiveServer, **fields: object) -> dict:
    body = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 3, **fields}
    with server.client("bob") as client:
        response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_extensions_are_listed_with_their_status(ext_server: LiveServer) -> None:
    with ext_server.client("bob") as client:
        ours = {item["name"]: item for item in client.get("/api/v1/extensions").json()}
        a1111 = {item["name"]: item for item in client.get("/sdapi/v1/extensions").json()}
    assert {"caption", "wildcards", "example", "raising", "broken"} <= set(ours)
    example = ours["example"]
    assert example["status"] == "loaded" and example["version"] == "1.0.0"
    assert example["scripts"] == ["Seed sweep"] and example["alwayson_scripts"] == ["Latent offset"]
    assert example["tabs"] == ["Example"] and example["settings"] == ["greeting"]
    assert example["route"] == "/api/v1/ext/example/"
    assert ours["broken"]["status"] == "failed" and "SyntaxError" in ours["broken"]["error"]
    assert ours["wildcards"]["builtin"] and not example["builtin"]
    assert a1111["example"] == {
        "name": "example",
        "remote": None,
        "branch": None,
        "commit_hash": None,
        "commit_date": None,
        "version": "1.0.0",
        "enabled": True,
    }
    assert a1111["broken"]["enabled"] is False


def test_scripts_and_alwayson_scripts_are_listed_as_a1111_does(ext_server: LiveServer) -> None:
    with ext_server.client("bob") as client:
        scripts = client.get("/sdapi/v1/scripts").json()
        info = client.get("/sdapi/v1/script-info").json()
    assert "seed sweep" in scripts["txt2img"] and "seed sweep" in scripts["img2img"]
    alwayson = {item["name"] for item in info if item["is_alwayson"] and not item["is_img2img"]}
    assert {"wildcards", "caption", "latent offset", "raising"} <= alwayson
    sweep = next(item for item in info if item["name"] == "seed sweep")
    assert [arg["label"] for arg in sweep["args"]] == ["Images", "Seed step"]


def test_an_extension_script_runs_through_script_name(ext_server: LiveServer) -> None:
    answer = _txt2img(ext_server, script_name="Seed sweep", script_args=[2, 5], seed=40)
    info = json.loads(answer["info"])
    assert len(answer["images"]) == 2 and info["all_seeds"] == [40, 45]


def test_alwayson_scripts_take_a1111_args(ext_server: LiveServer) -> None:
    answer = _txt2img(
        ext_server,
        prompt="a __color__ cat",
        alwayson_scripts={"Caption": {"args": [True, "seed {seed}", "bottom", False]}},
    )
    info = json.loads(answer["info"])
    prompt = parse_infotext(info["infotexts"][0]).prompt
    assert prompt.startswith("a ") and prompt.removeprefix("a ").removesuffix(" cat") in COLORS
    image = decode_png(answer["images"][0])
    assert image.width == 64 and image.height > 64  # the caption strip under the picture
    assert "Caption: seed {seed}" in info["infotexts"][0]


def test_bad_alwayson_scripts_are_refused_with_the_field(ext_server: LiveServer) -> None:
    with ext_server.client("bob") as client:
        unknown = client.post(
            "/sdapi/v1/txt2img",
            json={"prompt": "x", "steps": 1, "alwayson_scripts": {"ControlNet": {"args": []}}},
        )
        wrong = client.post(
            "/sdapi/v1/txt2img",
            json={"prompt": "x", "steps": 1, "alwayson_scripts": {"caption": {"args": [True, "{nope}"]}}},
        )
        shape = client.post(
            "/sdapi/v1/txt2img", json={"prompt": "x", "alwayson_scripts": {"caption": {"args": 3}}}
        )
        missing = client.post("/sdapi/v1/txt2img", json={"prompt": "a __no_such_list__", "steps": 1})
    assert unknown.status_code == 422 and "no always-on script 'ControlNet'" in unknown.json()["detail"]
    assert unknown.json()["field"] == "alwayson_scripts.ControlNet"
    assert wrong.status_code == 422 and "unknown field {nope}" in wrong.json()["detail"]
    assert shape.status_code == 422 and shape.json()["field"] == "alwayson_scripts.caption"
    assert missing.status_code == 422 and "no wildcard file no_such_list.txt" in missing.json()["detail"]


def test_a_raising_hook_leaves_the_job_working_and_is_reported(ext_server: LiveServer) -> None:
    answer = _txt2img(ext_server)
    info = json.loads(answer["info"])
    assert len(answer["images"]) == 1
    assert any(
        warning.startswith("Extension raising: Raising: on_step failed")
        for warning in info["extension_warnings"]
    )
    with ext_server.client("bob") as client:
        job = client.post("/api/v1/jobs/txt2img", json={"prompt": "a", "steps": 1, "width": 64, "height": 64})
        name, final = read_events(client, f"/api/v1/jobs/{job.json()['id']}/events")[-1]
        listed = {item["name"]: item for item in client.get("/api/v1/extensions").json()}
    assert name == "done" and any("Extension raising" in warning for warning in final["warnings"])
    assert any("on_step failed (RuntimeError: boom" in problem for problem in listed["raising"]["problems"])


def test_extension_routes_sit_behind_the_login(ext_server: LiveServer) -> None:
    with ext_server.client(None) as anonymous:
        assert anonymous.get("/api/v1/ext/example/hello").status_code == 401
        assert anonymous.get("/api/v1/extensions").status_code == 401
    with ext_server.client("bob") as client:
        assert client.get("/api/v1/ext/example/hello").json() == {
            "greeting": "Hello from the example extension"
        }
        assert "color" in client.get("/api/v1/ext/wildcards/wildcards").json()
        assert "red" in client.get("/api/v1/ext/wildcards/wildcards/color").json()
        assert client.get("/api/v1/ext/wildcards/wildcards/nope").status_code == 404


def test_installing_needs_an_admin_and_is_off_when_listening(ext_server: LiveServer, tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    source = commit_as_git_repository(
        write_extension(tmp_path, "tiny-ext", "def setup(ext):\n    pass\n", 'name = "tiny"\nversion = "1"\n')
    )
    body = {"url": source.as_uri()}
    studio = ext_server.studio
    with ext_server.client("bob") as bob, ext_server.client("alice") as alice:
        refused = bob.post("/api/v1/extensions/install", json=body)
        assert refused.status_code == 403 and "only an admin" in refused.json()["detail"]
        original = studio.settings
        studio.settings = replace(original, listen=True)
        try:
            listening = alice.post("/api/v1/extensions/install", json=body)
            assert listening.status_code == 403
            assert "--enable-insecure-extension-access" in listening.json()["detail"]
            studio.settings = replace(original, listen=True, allow_extension_install=True)
            installed = alice.post("/api/v1/extensions/install", json=body)
        finally:
            studio.settings = original
        assert installed.status_code == 201, installed.text
        assert installed.json()["folder"] == "tiny-ext" and "restart" in installed.json()["message"]
        assert (ext_server.data_dir / "extensions" / "tiny-ext" / "extension.toml").is_file()
        again = alice.post("/api/v1/extensions/install", json=body)
        assert again.status_code == 422 and "already exists" in again.json()["detail"]
        bad = alice.post("/api/v1/extensions/install", json={"url": "not a url"})
        assert bad.status_code == 422 and bad.json()["field"] == "url"

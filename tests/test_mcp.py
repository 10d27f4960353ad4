"""`/mcp` and `python -m webui.mcp` through the official `mcp` SDK client, on a real server with a login."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from tests.http_helpers import LiveServer

REPO = Path(__file__).resolve().parents[1]
TOOLS = {
    "generate_image",
    "edit_image",
    "inpaint_image",
    "upscale_image",
    "list_models",
    "switch_model",
    "get_job",
    "cancel_job",
    "read_image_parameters",
}
FAST = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def tokens(server: LiveServer) -> dict[str, str]:
    made = {}
    for user in ("bob", "carol"):
        with server.client(user) as client:
            made[user] = client.post("/api/v1/tokens", json={"name": "mcp tests"}).json()["token"]
    return made


def over_http(server: LiveServer, token: str | None, use: Callable[[Client], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http,
            Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as client,
        ):
            return await use(client)

    return asyncio.run(run())


def _texts(result: Any) -> str:
    return "\n".join(item.text for item in result.content if item.type == "text")


def _images(result: Any) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(item.data))) for item in result.content if item.type == "image"
    ]


def _url(result: Any) -> str:
    return re.search(r"url: (\S+)", _texts(result))[1]


def test_the_tools_and_their_schemas(server: LiveServer, tokens: dict[str, str]) -> None:
    listed = over_http(server, tokens["bob"], lambda client: client.list_tools())
    assert {tool.name for tool in listed.tools} == TOOLS
    for tool in listed.tools:
        assert tool.description and len(tool.description) > 30, tool.name
        for name, schema in tool.input_schema.get("properties", {}).items():
            assert schema.get("description"), f"{tool.name}.{name}"
    generate = next(tool for tool in listed.tools if tool.name == "generate_image")
    assert generate.input_schema["required"] == ["prompt"]
    assert "context" not in generate.input_schema["properties"]


def test_a_generation_with_progress_then_edits_of_its_url(server: LiveServer, tokens: dict[str, str]) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def note(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async def use(client: Client) -> tuple[Any, ...]:
        made = await client.call_tool(
            "generate_image", {"prompt": "a red fox", "seed": 777, **FAST}, progress_callback=note
        )
        url = _url(made)
        mask = Image.new("L", (64, 64), 0)
        mask.paste(255, (16, 16, 48, 48))
        mask_b64 = base64.b64encode(_png(mask)).decode()
        inpainted = await client.call_tool(
            "inpaint_image",
            {"image": url, "mask": mask_b64, "prompt": "a blue moon", "steps": 2, "seed": 3},
        )
        edited = await client.call_tool("edit_image", {"image": url, "prompt": "winter", "steps": 2})
        read = await client.call_tool("read_image_parameters", {"image": _url(inpainted)})
        larger = await client.call_tool("upscale_image", {"image": url, "scale": 2})
        return made, inpainted, edited, read, larger

    made, inpainted, edited, read, larger = over_http(server, tokens["bob"], use)
    assert not made.is_error, _texts(made)
    [image] = _images(made)
    assert image.format == "PNG" and image.size == (64, 64)
    assert "Seed: 777" in _texts(made) and "Seed: 777" in image.info["parameters"]
    assert progress and progress[-1][0] == 100 and all(total == 100 for _, total, _ in progress)
    assert [value for value, _, _ in progress] == sorted(value for value, _, _ in progress)
    assert not inpainted.is_error and "Mask blur" in _texts(inpainted)
    assert not edited.is_error and _images(edited)[0].size == (64, 64)
    parameters = json.loads(_texts(read))["parameters"]
    assert parameters["prompt"] == "a blue moon" and parameters["Seed"] == "3"
    assert _images(larger)[0].size == (128, 128)


def test_jobs_belong_to_the_tokens_user(server: LiveServer, tokens: dict[str, str]) -> None:
    async def start(client: Client) -> Any:
        return await client.call_tool("generate_image", {"prompt": "a boat", "wait": False, **FAST})

    started = json.loads(_texts(over_http(server, tokens["bob"], start)))
    job_id = started["job_id"]

    async def look(client: Client) -> Any:
        return await client.call_tool("get_job", {"job_id": job_id})

    strangers = over_http(server, tokens["carol"], look)
    assert strangers.is_error and "no job" in _texts(strangers)
    server.jobs.get(job_id, server_caller("bob")).wait(60)
    owners = over_http(server, tokens["bob"], look)
    assert not owners.is_error and _images(owners)
    with server.client("carol") as carol:
        assert carol.get(f"/api/v1/jobs/{job_id}").status_code == 404


def server_caller(name: str) -> Any:
    from webui.jobs import Caller

    return Caller(name)


def test_limits_and_bad_input_are_tool_errors(server: LiveServer, tokens: dict[str, str]) -> None:
    async def use(client: Client) -> list[Any]:
        return [
            await client.call_tool("generate_image", {"prompt": "x", "batch": 9, **FAST}),
            await client.call_tool("generate_image", {"prompt": "x", "model": "no-such", **FAST}),
            await client.call_tool("generate_image", {"prompt": "x", "width": 60}),
            await client.call_tool("edit_image", {"image": "not base64!", "prompt": "x"}),
            await client.call_tool(
                "edit_image", {"image": f"{server.url}/api/v1/jobs/nope/images/0", "prompt": "x"}
            ),
            await client.call_tool("switch_model", {"model": "no-such"}),
            await client.call_tool("cancel_job", {"job_id": "nope"}),
        ]

    over_limit, unknown_model, bad_width, bad_image, foreign_url, bad_switch, no_job = over_http(
        server, tokens["bob"], use
    )
    assert over_limit.is_error and "limit" in _texts(over_limit)
    assert all(
        result.is_error for result in (unknown_model, bad_width, bad_image, foreign_url, bad_switch, no_job)
    )
    assert "base64" in _texts(bad_image) and "no job" in _texts(foreign_url)


def test_models_can_be_listed_and_switched(server: LiveServer, tokens: dict[str, str]) -> None:
    async def use(client: Client) -> list[Any]:
        listed = await client.call_tool("list_models", {})
        switched = await client.call_tool("switch_model", {"model": "tiny-sd15"})
        return [listed, switched]

    listed, switched = over_http(server, tokens["bob"], use)
    names = {model["name"] for model in json.loads(_texts(listed))["models"]}
    assert names == {"tiny-sd15", "tiny-sd15-inpaint"}
    assert "tiny-sd15" in _texts(switched)


def test_no_token_no_tools(server: LiveServer) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for headers in ({}, {"Authorization": "Bearer sdw_0123456789ab_wrong"}):
        answer = httpx.post(f"{server.url}/mcp", json=body, headers=headers, timeout=30)
        assert answer.status_code == 401
    # The SDK client reports the refused connection as an MCPError (inside its task groups' errors).
    with pytest.raises(BaseException) as raised:
        over_http(server, "sdw_0123456789ab_wrong", lambda client: client.list_tools())
    refused = raised.value
    if isinstance(refused, BaseExceptionGroup):
        refused = refused.subgroup(MCPError)
    assert refused is not None


def test_the_stdio_bridge(server: LiveServer, tokens: dict[str, str]) -> None:
    progress: list[float] = []

    async def note(value: float, _total: float | None, _message: str | None) -> None:
        progress.append(value)

    async def run() -> tuple[Any, Any]:
        env = {**os.environ, "PYTHONPATH": str(REPO), "WEBUI_API_TOKEN": tokens["carol"]}
        command = StdioServerParameters(
            command=sys.executable, args=["-m", "webui.mcp", "--url", server.url], env=env, cwd=str(REPO)
        )
        async with Client(command) as client:
            listed = await client.list_tools()
            made = await client.call_tool(
                "generate_image", {"prompt": "a kite", "seed": 99, **FAST}, progress_callback=note
            )
            return listed, made

    listed, made = asyncio.run(run())
    assert {tool.name for tool in listed.tools} == TOOLS
    assert not made.is_error and "Seed: 99" in _texts(made) and _images(made)[0].size == (64, 64)
    assert progress and progress[-1] == 100
    job_id = re.search(r"Job (\w+)", _texts(made))[1]
    assert server.jobs.get(job_id, server_caller("carol")).owner == "carol"


def _png(image: Image.Image) -> bytes:
    stream = io.BytesIO()
    image.save(stream, format="PNG")
    return stream.getvalue()


def test_other_methods_get_405(server: LiveServer, tokens: dict[str, str]) -> None:
    # Stateless MCP: no session to stream to (GET) or to end (DELETE); an open GET would hang.
    headers = {"Authorization": f"Bearer {tokens['bob']}"}
    for method in ("GET", "DELETE", "PUT"):
        answer = httpx.request(method, f"{server.url}/mcp", headers=headers, timeout=30)
        assert answer.status_code == 405 and answer.headers["allow"] == "POST", method


def test_the_bridge_says_why_it_cannot_start(server: LiveServer) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WEBUI_API_TOKEN": "sdw_0123456789ab_wrong"}
    command = [sys.executable, "-m", "webui.mcp", "--url", server.url]
    ended = subprocess.run(
        command, env=env, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60
    )
    assert ended.returncode == 1 and "refused the token (401)" in ended.stderr


def test_a_client_that_gives_up_stops_its_job(server: LiveServer, tokens: dict[str, str]) -> None:
    async def give_up(client: Client) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.call_tool("generate_image", {"prompt": "slow", **FAST}), 3)

    server.gate.close()
    try:
        over_http(server, tokens["bob"], give_up)
        assert server.gate.reached.wait(30)
        job = server.gate.held_job
        deadline = time.monotonic() + 10
        while not job.control.interrupted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job.control.interrupted
    finally:
        server.gate.open()
    assert job.wait(60) and job.state.value == "interrupted"


def test_an_upscale_is_held_to_the_size_limit(server: LiveServer, tokens: dict[str, str]) -> None:
    image = base64.b64encode(_png(Image.new("RGB", (64, 64)))).decode()

    async def use(client: Client) -> Any:
        return await client.call_tool("upscale_image", {"image": image, "scale": 2})

    before = server.jobs.limits.max_pixels
    server.jobs.set_limits(max_pixels=100 * 100)
    try:
        refused = over_http(server, tokens["bob"], use)
    finally:
        server.jobs.set_limits(max_pixels=before)
    assert refused.is_error and "128x128" in _texts(refused) and "--max-size" in _texts(refused)

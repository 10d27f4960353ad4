"""`python -m webui.mcp --url http://host:7860 [--token T]`: the server's MCP tools over stdio.

For MCP clients that can only launch a command: this process speaks MCP on stdin/stdout and
forwards every list and call to the server's `/mcp` endpoint, relaying progress back, so the
tools run on the server, as the token's user, exactly as over HTTP. No torch, nothing local.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.types import CallToolRequestParams, CallToolResult, ListToolsResult, PaginatedRequestParams

TOKEN_ENV = "WEBUI_API_TOKEN"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m webui.mcp",
        description="Bridge an MCP client that launches commands (stdio) to this studio's /mcp endpoint.",
    )
    parser.add_argument(
        "--url", required=True, help="the server, e.g. http://127.0.0.1:7860 (or its /mcp URL)"
    )
    parser.add_argument(
        "--token",
        default=None,
        help=f"an API token of the server (default: ${TOKEN_ENV}); none for a server without login",
    )
    return parser.parse_args(argv)


def endpoint(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/mcp") else f"{url}/mcp"


async def bridge(url: str, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # Generations can take minutes: the read timeout covers one event stream, progress included.
    timeout = httpx2.Timeout(30.0, read=3600.0)
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
        Client(streamable_http_client(endpoint(url), http_client=http), cache=None) as remote,
    ):

        async def list_tools(_ctx: Any, _params: PaginatedRequestParams | None) -> ListToolsResult:
            return await remote.list_tools()

        async def call_tool(ctx: Any, params: CallToolRequestParams) -> CallToolResult:
            async def relay(progress: float, total: float | None, message: str | None) -> None:
                await ctx.session.report_progress(progress, total, message)

            return await remote.call_tool(params.name, params.arguments, progress_callback=relay)

        server: Server[Any] = Server(
            "stable-diffusion-studio",
            instructions=remote.instructions,
            on_list_tools=list_tools,
            on_call_tool=call_tool,
        )
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    try:
        anyio.run(bridge, args.url, token)
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # any failure to reach the server, in one line
        why = _refusal(args.url, token) or _cause(error)
        print(f"error: cannot bridge to {endpoint(args.url)}: {why}", file=sys.stderr)
        return 1
    return 0


def _refusal(url: str, token: str | None) -> str | None:
    """Why the server refused us, when it did: the SDK's own error does not say."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        status = httpx2.post(endpoint(url), headers=headers, json={}, timeout=10).status_code
    except httpx2.HTTPError:
        return None
    if status == 401:
        return f"the server refused the token (401): give --token or ${TOKEN_ENV}, or make a new token"
    if status == 429:
        return "too many failed logins from here (429); wait and try again"
    return None


def _cause(error: BaseException) -> str:
    """The first real error inside the task groups' wrapping, as one line."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}"


if __name__ == "__main__":
    raise SystemExit(main())

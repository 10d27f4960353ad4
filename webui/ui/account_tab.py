"""The Account tab (servers with a login): the user's API tokens for agents and apps.

A token is shown once, when made; the list shows names and ids only. The same store backs
`/api/v1/tokens` and `python -m webui token`, so all three see the same tokens.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.api.tokens import TokenError, TokenStore
from webui.ui.context import PRIVATE, UiContext
from webui.ui.results import error_box, hide_error, show_error

_HELP = (
    "API tokens let chat apps and coding agents generate as you, through the MCP endpoint `/mcp` "
    "or the OpenAI-compatible images API `/v1` (send it as `Authorization: Bearer <token>`, or as "
    "the app's OpenAI API key). A token is shown once, when you create it; revoke one you no longer "
    "use or may have leaked. See docs/agents.md for how to add this server to an app."
)
_COLUMNS = ["Name", "Token", "Created"]


@dataclass(frozen=True)
class AccountTab:
    refresh: Callable[..., tuple[Any, ...]]  # for the page's load event: fills the tab for its user
    outputs: list[Any]


def build_account_tab(ctx: UiContext, tokens: TokenStore) -> AccountTab:
    user = gr.Markdown(elem_id="account-user")
    gr.Markdown(_HELP)
    with gr.Row():
        name = gr.Textbox(label="New token's name", placeholder="e.g. Claude Desktop", max_lines=1, scale=3)
        create = gr.Button("Create token", variant="primary", scale=1, elem_id="account-create-token")
    shown = gr.Textbox(
        label="Your new token: copy it now, it is not shown again",
        visible=False,
        interactive=False,
        buttons=["copy"],
        elem_id="account-new-token",
    )
    table = gr.Dataframe(headers=_COLUMNS, interactive=False, elem_id="account-tokens", label="Your tokens")
    with gr.Row():
        chosen = gr.Dropdown(label="Token to revoke", choices=[], scale=3, elem_id="account-revoke-choice")
        revoke = gr.Button("Revoke", variant="stop", scale=1, elem_id="account-revoke")
        listed = gr.Button("Refresh", scale=1, elem_id="account-refresh")
    error = error_box("account")

    def listing(owner: str) -> tuple[Any, Any, Any]:
        infos = tokens.list(owner)
        rows = [[info.name, f"sdw_{info.id}_…", _when(info.created)] for info in infos]
        choices = [(f"{info.name} (sdw_{info.id}_…)", info.id) for info in infos]
        return (
            f"Signed in as **{owner}**.",
            gr.update(value=rows or [["", "", ""]]),
            gr.update(choices=choices, value=None),
        )

    def refresh(request: gr.Request) -> tuple[Any, ...]:
        return (*listing(ctx.caller(request).name), hide_error())

    def make(label: str, request: gr.Request) -> tuple[Any, ...]:
        owner = ctx.caller(request).name
        try:
            token, _info = tokens.create(owner, label or "")
        except TokenError as problem:
            return (*listing(owner), gr.update(), gr.update(), show_error(str(problem)))
        return (*listing(owner), gr.update(value=token, visible=True), "", hide_error())

    def drop(token_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        owner = ctx.caller(request).name
        if not token_id:
            return (*listing(owner), gr.update(), show_error("Choose a token to revoke first."))
        if not tokens.revoke(owner, token_id):
            return (*listing(owner), gr.update(), show_error("That token is already gone."))
        return (*listing(owner), gr.update(value="", visible=False), hide_error())

    outputs = [user, table, chosen]
    create.click(make, inputs=[name], outputs=[*outputs, shown, name, error], **PRIVATE)
    revoke.click(drop, inputs=[chosen], outputs=[*outputs, shown, error], **PRIVATE)
    listed.click(refresh, outputs=[*outputs, error], **PRIVATE)
    return AccountTab(refresh, [*outputs, error])


def _when(created: float) -> str:
    return dt.datetime.fromtimestamp(created).strftime("%Y-%m-%d %H:%M")

"""`python -m webui token create|list|revoke USER [--data-dir D]`: API tokens, for the server's owner.

Writes the same file the server reads (`DATA_DIR/api_tokens.json`), and a running server picks
changes up at once. A token works only for a user the server's --auth/--auth-file knows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from webui.api.tokens import TokenError, TokenStore


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m webui token", description="Manage API tokens")
    commands = parser.add_subparsers(dest="action", required=True)
    for action, help_text in (
        ("create", "make a token for USER and print it (shown only this once)"),
        ("list", "list USER's tokens (names and ids, never the tokens)"),
        ("revoke", "revoke USER's token TOKEN_ID"),
    ):
        command = commands.add_parser(action, help=help_text, description=help_text)
        command.add_argument("user", metavar="USER")
        if action == "revoke":
            command.add_argument("token_id", metavar="TOKEN_ID", help="as `list` shows it")
        if action == "create":
            command.add_argument("--name", default="", help="what the token is for")
        command.add_argument("--data-dir", default=".", help="the server's --data-dir (default: .)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    store = TokenStore.in_data_dir(Path(args.data_dir))
    try:
        if args.action == "create":
            token, info = store.create(args.user, args.name)
            print(token)
            print(
                f"made token {info.id} for {args.user}; keep it secret, it is not shown again",
                file=sys.stderr,
            )
        elif args.action == "list":
            for info in store.list(args.user):
                created = dt.datetime.fromtimestamp(info.created).strftime("%Y-%m-%d %H:%M")
                print(f"{info.id}  {created}  {info.name}")
        elif not store.revoke(args.user, args.token_id):
            print(f"error: {args.user} has no token {args.token_id}", file=sys.stderr)
            return 1
    except (TokenError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0

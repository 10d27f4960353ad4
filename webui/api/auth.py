"""Login for a shared server: HTTP Basic on every route, the page, both APIs, files and streams.

Basic auth is what A1111 clients already send (`webuiapi.set_auth`, `--api-auth`) and what
browsers answer with their own login prompt, then repeat on every request to the same origin,
fetches, event streams and websockets included, so one check in front of the whole app covers all.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.jobs import LOCAL_CALLER, Caller

log = logging.getLogger(__name__)

REALM = "Stable Diffusion studio"
# Slows password guessing without holding a thread: the wait is asynchronous.
_FAILED_LOGIN_DELAY_S = 0.5


@dataclass(frozen=True)
class Credentials:
    passwords: Mapping[str, str]  # user -> password
    admins: frozenset[str]

    @classmethod
    def from_flags(
        cls, auth: str | None, auth_file: Path | None, admins: str | None = None
    ) -> Credentials | None:
        """`--auth user:pass[,user2:pass2]` and `--auth-file` (one `user:pass` per line); None: no login."""
        pairs = list(_pairs(auth.split(","), "--auth")) if auth else []
        if auth_file is not None:
            try:
                lines = Path(auth_file).read_text(encoding="utf-8").splitlines()
            except OSError as error:
                raise ValueError(f"--auth-file {auth_file}: {error.strerror or error}") from error
            pairs += _pairs((line for line in lines if not line.strip().startswith("#")), "--auth-file")
        if not pairs:
            if auth is not None or auth_file is not None:
                raise ValueError("--auth/--auth-file gave no user:password pairs")
            return None
        passwords = dict(pairs)
        admin_names = frozenset(name.strip() for name in (admins or "").split(",") if name.strip())
        unknown = admin_names - passwords.keys()
        if unknown:
            raise ValueError(f"--admin names users that cannot log in: {', '.join(sorted(unknown))}")
        return cls(passwords, admin_names)

    def authenticate(self, header: str | None) -> Caller | None:
        """The caller for an `Authorization: Basic ...` header, or None."""
        if not header or header[:6].lower() != "basic ":
            return None
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, _, password = decoded.partition(":")
        expected = self.passwords.get(user)
        # Compare even for unknown users, so timing does not tell which names exist.
        matches = hmac.compare_digest(password.encode(), (expected or "\0" + password).encode())
        if expected is None or not matches:
            return None
        return Caller(user, admin=user in self.admins)

    def secrets(self) -> list[str]:
        return [password for password in self.passwords.values() if password]


def _pairs(items: Iterable[str], flag: str) -> Iterable[tuple[str, str]]:
    for item in items:
        item = item.strip()
        if not item:
            continue
        user, colon, password = item.partition(":")
        if not colon or not user.strip() or not password:
            raise ValueError(f"{flag}: expected user:password, got an entry without both parts")
        yield user.strip(), password


class LoginMiddleware:
    """ASGI middleware in front of everything; puts the Caller in `scope["state"]["caller"]`."""

    def __init__(self, app: Any, credentials: Credentials | None) -> None:
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.credentials is None:
            caller: Caller | None = LOCAL_CALLER
        else:
            header = _header(scope, b"authorization")
            caller = self.credentials.authenticate(header)
            if caller is None:
                if header:
                    log.warning("refused a login for %s from %s", scope.get("path"), _client(scope))
                    await asyncio.sleep(_FAILED_LOGIN_DELAY_S)
                await _refuse(scope, receive, send)
                return
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)


async def _refuse(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": "login required"})
        return
    body = json.dumps({"error": "login required", "detail": "this server needs a user name and password"})
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"www-authenticate", f'Basic realm="{REALM}", charset="UTF-8"'.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _client(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return f"{client[0]}" if client else "unknown"


def caller_of(state: Any) -> Caller:
    """The caller LoginMiddleware put on a request's state; no caller there is a wiring bug."""
    caller = getattr(state, "caller", None)
    if not isinstance(caller, Caller):
        raise RuntimeError("request reached a route without passing LoginMiddleware")
    return caller

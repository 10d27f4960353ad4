"""Login for a shared server: HTTP Basic on every route, the page, both APIs, files and streams.

Basic auth is what A1111 clients already send (`webuiapi.set_auth`, `--api-auth`) and what
browsers answer with their own login prompt, then repeat on every request to the same origin,
fetches, event streams and websockets included, so one check in front of the whole app covers all.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from webui.api.login_throttle import LoginLimits, LoginThrottle
from webui.api.passwords import check_stored, hash_password, is_hashed, verify
from webui.api.tokens import TokenStore, bearer_token, token_id_of
from webui.jobs import LOCAL_CALLER, Caller

log = logging.getLogger(__name__)

REALM = "Stable Diffusion studio"
# Slows password guessing without holding a thread: the wait is asynchronous.
_FAILED_LOGIN_DELAY_S = 0.5


@dataclass(frozen=True)
class Credentials:
    passwords: Mapping[str, str]  # user -> password, or its `pbkdf2_sha256$...` hash (passwords.py)
    admins: frozenset[str]
    # Browsers send the password with every request: a hash is checked once, then its
    # keyed digest is remembered here, so later requests cost a fast comparison only.
    _verified: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(32), compare=False, repr=False)

    @classmethod
    def from_flags(
        cls, auth: str | None, auth_file: Path | None, admins: str | None = None
    ) -> Credentials | None:
        """`--auth user:pass[,user2:pass2]` and `--auth-file` (one `user:pass` per line); None: no login.

        A password may be given as its `pbkdf2_sha256$...` hash (`python -m webui.tools.hash_password`)."""
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
        login = basic_login(header)
        if login is None:
            return None
        return self.remembered(*login) or self.check(*login)

    def remembered(self, user: str, password: str) -> Caller | None:
        """The caller, when this exact password was verified for `user` before (fast)."""
        known = self._verified.get(user)
        if known is None or not hmac.compare_digest(known, self._digest(user, password)):
            return None
        return Caller(user, admin=user in self.admins)

    def check(self, user: str, password: str) -> Caller | None:
        """Verify a login in constant time; a hashed password takes a PBKDF2 run (~0.3 s)."""
        expected = self.passwords.get(user)
        # Check even for unknown names, against a hash when any password is one, so the time
        # taken does not tell which names exist.
        if expected is None:
            verify(password, self._decoy)
            return None
        if not verify(password, expected):
            return None
        self._verified[user] = self._digest(user, password)
        return Caller(user, admin=user in self.admins)

    def slow_to_check(self, user: str) -> bool:
        """Whether checking `user`'s password runs PBKDF2 (a hash is stored, or any is for a stranger)."""
        stored = self.passwords.get(user)
        return is_hashed(stored) if stored is not None else self._any_hashed

    @cached_property
    def _any_hashed(self) -> bool:
        return any(is_hashed(value) for value in self.passwords.values())

    @cached_property
    def _decoy(self) -> str:
        # As slow as the stored hashes are, so a stranger's name takes as long as a real one.
        costs = [int(value.split("$")[1]) for value in self.passwords.values() if is_hashed(value)]
        return hash_password("decoy", max(costs), salt="decoy") if costs else "\0decoy"

    def _digest(self, user: str, password: str) -> bytes:
        return hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()

    def secrets(self) -> list[str]:
        return [password for password in self.passwords.values() if password]


def basic_login(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic ...` header; None when it is not one."""
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, password = decoded.partition(":")
    return user, password


def _pairs(items: Iterable[str], flag: str) -> Iterable[tuple[str, str]]:
    for item in items:
        item = item.strip()
        if not item:
            continue
        user, colon, password = item.partition(":")
        if not colon or not user.strip() or not password:
            raise ValueError(f"{flag}: expected user:password, got an entry without both parts")
        try:
            check_stored(password)
        except ValueError as error:
            raise ValueError(f"{flag}: user {user.strip()}: {error}") from None
        yield user.strip(), password


class LoginMiddleware:
    """ASGI middleware in front of everything; puts the Caller in `scope["state"]["caller"]`."""

    def __init__(
        self,
        app: Any,
        credentials: Credentials | None,
        limits: LoginLimits | None = None,
        tokens: TokenStore | None = None,
    ) -> None:
        self.app = app
        self.credentials = credentials
        self.throttle = LoginThrottle(limits)
        self.tokens = tokens  # API tokens (tokens.py), taken as `Authorization: Bearer ...`

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.credentials is None:
            caller: Caller | None = LOCAL_CALLER
        else:
            caller = await self._login(scope, receive, send, self.credentials)
            if caller is None:
                return
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)

    async def _login(
        self, scope: dict[str, Any], receive: Any, send: Any, credentials: Credentials
    ) -> Caller | None:
        """The caller, or None once a refusal (401, or 429 while throttled) has been sent."""
        header = _header(scope, b"authorization")
        if not header:
            await _refuse(scope, receive, send)
            return None
        login, token = basic_login(header), bearer_token(header)
        # A token is throttled under its id, as a login is under its user name.
        user = login[0] if login else f"token {token_id_of(token)}" if token is not None else ""
        address = _client(scope)
        wait_s = self.throttle.retry_after(user, address)
        if wait_s:
            log.info("throttled a login as %r from %s for %d s", user, address, wait_s)
            await _too_many(scope, send, wait_s)
            return None
        self.throttle.attempt(user, address)
        caller = None
        if login is not None:
            caller = credentials.remembered(*login)
            if caller is None and credentials.slow_to_check(login[0]):
                caller = await asyncio.to_thread(credentials.check, *login)  # PBKDF2: off the event loop
            elif caller is None:
                caller = credentials.check(*login)
        elif token is not None and self.tokens is not None:
            owner = await asyncio.to_thread(self.tokens.user_of, token)
            if owner is not None and owner in credentials.passwords:  # a user removed from --auth: no entry
                caller = Caller(owner, admin=owner in credentials.admins)
        if caller is None:
            log.warning("refused a login for %s from %s", scope.get("path"), address)
            await asyncio.sleep(_FAILED_LOGIN_DELAY_S)
            await _refuse(scope, receive, send)
            return None
        self.throttle.succeeded(user, address)
        return caller


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


async def _too_many(scope: dict[str, Any], send: Any, wait_s: int) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": "too many failed logins"})
        return
    body = json.dumps(
        {
            "error": "too many failed logins",
            "detail": f"too many failed logins for this user or from this address; try again in {wait_s} s",
        }
    )
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"retry-after", str(wait_s).encode()),
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

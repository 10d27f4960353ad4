"""Per-user API tokens for agents and apps: `Authorization: Bearer sdw_<id>_<secret>`.

A token is shown once, when it is made; the file keeps only its SHA-256. A plain hash is enough
(no PBKDF2) because a token is 256 random bits, not a password someone chose. The `<id>` part
lets a check find the one entry to compare against, and names the token in the throttle and logs.
No torch, no web framework: the page, the CLI and the server all use this module.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from webui.outputs.files import write_atomically

log = logging.getLogger(__name__)

FILE_NAME = "api_tokens.json"
PREFIX = "sdw_"
_ID_BYTES = 6
_SECRET_BYTES = 32
MAX_NAME_CHARS = 100
MAX_TOKENS_PER_USER = 100
# Compared against when a token's id is unknown, so the time taken does not tell ids apart.
_DECOY = hashlib.sha256(b"no such token").hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    """What is kept (and listed) about a token; never the token itself."""

    id: str
    user: str
    name: str
    created: float
    sha256: str

    def public(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "created": self.created, "hint": f"{PREFIX}{self.id}_..."}


class TokenError(ValueError):
    """A token that cannot be made (bad name, too many)."""


class TokenStore:
    """The tokens of one data folder, in `<data_dir>/api_tokens.json`, re-read when the file
    changes, so tokens made by `python -m webui token create` work in a running server at once."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._tokens: dict[str, TokenInfo] = {}
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) of the file last read

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> TokenStore:
        return cls(Path(data_dir) / FILE_NAME)

    def create(self, user: str, name: str = "") -> tuple[str, TokenInfo]:
        """A new token for `user`: (the token, to show once; what is kept)."""
        name = name.strip()
        if not user:
            raise TokenError("a token needs a user name")
        if len(name) > MAX_NAME_CHARS:
            raise TokenError(f"name: at most {MAX_NAME_CHARS} characters")
        if any(not char.isprintable() for char in name):
            raise TokenError("name: only printable characters")
        with self._lock:
            tokens = self._load()
            if sum(info.user == user for info in tokens.values()) >= MAX_TOKENS_PER_USER:
                raise TokenError(f"{user} already has {MAX_TOKENS_PER_USER} tokens; revoke some first")
            token_id = secrets.token_hex(_ID_BYTES)
            token = f"{PREFIX}{token_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"
            info = TokenInfo(token_id, user, name or "token", round(time.time(), 3), _digest(token))
            self._save({**tokens, token_id: info})
        return token, info

    def list(self, user: str) -> list[TokenInfo]:
        with self._lock:
            return sorted(
                (info for info in self._load().values() if info.user == user), key=lambda info: info.created
            )

    def revoke(self, user: str, token_id: str) -> bool:
        """Forget `user`'s token `token_id`; False when they have none by that id."""
        with self._lock:
            tokens = self._load()
            info = tokens.get(token_id)
            if info is None or info.user != user:
                return False
            self._save({key: value for key, value in tokens.items() if key != token_id})
        return True

    def user_of(self, token: str) -> str | None:
        """The user a token belongs to; None for a wrong, malformed or revoked one."""
        token_id = token_id_of(token)
        with self._lock:
            try:
                info = self._load().get(token_id or "")
            except TokenError as error:
                log.error("%s", error)
                info = None
        expected = info.sha256 if info else _DECOY
        if not hmac.compare_digest(expected, _digest(token)) or info is None:
            return None
        return info.user

    def _load(self) -> dict[str, TokenInfo]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._tokens, self._seen = {}, None
            return self._tokens
        seen = (stat.st_mtime_ns, stat.st_size)
        if seen != self._seen:
            try:
                entries = json.loads(self.path.read_text(encoding="utf-8"))["tokens"]
                self._tokens = {entry["id"]: TokenInfo(**entry) for entry in entries}
            except (OSError, ValueError, KeyError, TypeError) as error:
                # Refuse every token rather than guess; creating one would overwrite the file.
                raise TokenError(f"{self.path} is unreadable ({error}); fix or remove it") from None
            self._seen = seen
        return self._tokens

    def _save(self, tokens: dict[str, TokenInfo]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"version": 1, "tokens": [asdict(info) for info in tokens.values()]}, indent=1)
        write_atomically(self.path, lambda stream: stream.write(text.encode("utf-8")))
        self._tokens = tokens
        stat = self.path.stat()
        self._seen = (stat.st_mtime_ns, stat.st_size)


def token_id_of(token: str) -> str | None:
    """The `<id>` of a well-formed `sdw_<id>_<secret>` token, else None."""
    if not token.startswith(PREFIX):
        return None
    token_id, underscore, secret = token[len(PREFIX) :].partition("_")
    if not underscore or not secret or len(token_id) != 2 * _ID_BYTES:
        return None
    return token_id if all(char in "0123456789abcdef" for char in token_id) else None


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer ...` header; None when it is not one."""
    if not header or header[:7].lower() != "bearer ":
        return None
    return header[7:].strip()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()

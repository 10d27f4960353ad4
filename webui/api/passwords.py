"""Passwords stored as `pbkdf2_sha256$ITERATIONS$SALT$HASH` (stdlib PBKDF2-HMAC-SHA256), or as they are.

Make one with `python -m webui.tools.hash_password`. Every comparison takes the same time
whatever the guess, so a wrong password does not tell how much of it was right.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

SCHEME = "pbkdf2_sha256"
ITERATIONS = 600_000  # OWASP's 2023 figure for PBKDF2-HMAC-SHA256: about 0.3 s on one core
_SALT_BYTES = 16
_MIN_ITERATIONS = 1_000


def hash_password(password: str, iterations: int = ITERATIONS, salt: str | None = None) -> str:
    """The stored form of `password`: `pbkdf2_sha256$ITERATIONS$SALT$HASH` (HASH in base64)."""
    if not password:
        raise ValueError("the password is empty")
    if iterations < _MIN_ITERATIONS:
        raise ValueError(f"use at least {_MIN_ITERATIONS} iterations, got {iterations}")
    salt = salt or secrets.token_urlsafe(_SALT_BYTES)
    if "$" in salt or ":" in salt:
        raise ValueError("the salt must not contain '$' or ':'")
    digest = _derive(password, salt, iterations)
    return f"{SCHEME}${iterations}${salt}${base64.b64encode(digest).decode('ascii')}"


def is_hashed(stored: str) -> bool:
    return stored.startswith(SCHEME + "$")


def check_stored(stored: str) -> None:
    """Raise ValueError for a `pbkdf2_sha256$...` entry that cannot be a hash this module made."""
    if is_hashed(stored):
        _parse(stored)


def verify(password: str, stored: str) -> bool:
    """Whether `password` matches `stored` (a hash, or a plain password), in constant time."""
    if is_hashed(stored):
        iterations, salt, expected = _parse(stored)
        return hmac.compare_digest(_derive(password, salt, iterations), expected)
    # Digests first: compare_digest on the strings themselves would reveal the stored length.
    return hmac.compare_digest(_sha256(password), _sha256(stored))


def _parse(stored: str) -> tuple[int, str, bytes]:
    parts = stored.split("$")
    if len(parts) != 4 or not parts[1].isdigit() or not parts[2]:
        raise ValueError(f"a stored password must look like {SCHEME}$ITERATIONS$SALT$HASH")
    try:
        expected = base64.b64decode(parts[3], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the HASH of a {SCHEME} entry is not base64") from None
    iterations = int(parts[1])
    if iterations < _MIN_ITERATIONS or len(expected) != hashlib.sha256().digest_size:
        raise ValueError(f"a {SCHEME} entry needs at least {_MIN_ITERATIONS} iterations and a 32-byte hash")
    return iterations, parts[2], expected


def _derive(password: str, salt: str, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt.encode("utf-8"), iterations)


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()

"""Who is asking: torch-free, so the page and the login can name a job's owner without the engine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    """Jobs are owned by name; an admin may see and stop anyone's."""

    name: str
    admin: bool = False


# Without a login there is one user, and it is the machine's owner.
LOCAL_CALLER = Caller("local", admin=True)

"""What the page says about models: where the current one is now, and what the action just taken
loaded, moved or evicted (not the cache's latest event, which may be another model's, or old)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from webui.model_manager.cache import ModelEvent
    from webui.studio import Studio

GB = 1_000_000_000
NOTHING_MOVED = "nothing had to be loaded or moved"


def event_text(event: ModelEvent) -> str:
    """One line per event; a small or quick transfer's rate in MB/s rather than "0.0 GB/s"."""
    size = f"{event.size_bytes / GB:.2f} GB" if event.size_bytes >= GB else f"{event.size_bytes / 1e6:.1f} MB"
    where = {"vram": event.device, "ram": "RAM", "disk": "disk"}
    source, target = where[event.source.value], where[event.target.value]
    if event.action == "evict":
        return f"evicted {event.name} from {source}: {size} freed in {event.seconds:.2f} s"
    rate = event.bytes_per_second
    speed = f"{rate / GB:.1f} GB/s" if rate >= GB / 10 else f"{rate / 1e6:.0f} MB/s"
    verb = "loaded" if event.action == "load" else "moved"
    return f"{verb} {event.name} from {source} to {target}: {size} in {event.seconds:.2f} s ({speed})"


def run_and_describe(studio: Studio, action: Callable[[], object]) -> str:
    """Run `action` and say what it loaded, moved or evicted (or that it had nothing to do)."""
    before = studio.models.model_events()
    last = before[-1] if before else None
    action()
    events = studio.models.model_events()
    # The history is bounded: find the last event seen before by identity, not by position.
    start = next((i + 1 for i in range(len(events) - 1, -1, -1) if events[i] is last), 0) if last else 0
    return "; ".join(event_text(event) for event in events[start:]) or NOTHING_MOVED


def current_place(studio: Studio) -> str:
    """ "tiny: in RAM" and the like, for the selected checkpoint."""
    file = studio.models.current_checkpoint_file()
    placement = next((p for p in studio.models.placements() if p.path == file.path), None)
    tier = placement.tier.value if placement else "disk"
    device = studio.device.type
    place = {
        "vram": f"in VRAM ({device})" if device != "cpu" else "in memory, ready (cpu)",
        "ram": "in RAM",
        "disk": "on disk (loaded by the next job)",
    }[tier]
    return f"**{file.name}**: {place}"


def header_status(studio: Studio, done: str = "") -> str:
    """The header's line: the current model's place, then what the last action did, if any."""
    return f"{current_place(studio)} · {done}" if done else current_place(studio)

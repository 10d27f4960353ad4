"""Loaded models in three tiers: the compute device (VRAM), host memory (RAM) and disk.

Each file is loaded at most once: a model lives in exactly one tier, and moving between
VRAM and RAM moves its tensors rather than rebuilding modules. Budgets are in bytes; the
least recently used model that no job is using is demoted (VRAM -> RAM) or dropped
(RAM -> disk) to make room. Every load, move and eviction is timed and kept as an event.
"""

from __future__ import annotations

import gc
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import psutil
import torch

from webui.model_manager.load import LoadedModel
from webui.model_manager.offload import MemoryMode, Offloader, attach_offload, choose_memory_mode
from webui.model_manager.placement import HOST, model_bytes, module_bytes, move_model, pin_available

log = logging.getLogger(__name__)

GB = 1_000_000_000
# Default shares of the machine: the rest of VRAM is for activations, the rest of RAM for the OS.
DEFAULT_VRAM_SHARE = 0.6
DEFAULT_RAM_SHARE = 0.5


class Tier(str, Enum):
    VRAM = "vram"
    RAM = "ram"
    DISK = "disk"


@dataclass(frozen=True)
class MemoryBudgets:
    vram_bytes: int
    ram_bytes: int

    @classmethod
    def for_machine(
        cls, device: torch.device, vram_gb: float | None = None, ram_gb: float | None = None
    ) -> MemoryBudgets:
        ram = ram_gb * GB if ram_gb is not None else psutil.virtual_memory().total * DEFAULT_RAM_SHARE
        if vram_gb is not None:
            vram = vram_gb * GB
        elif device.type == "cuda":
            vram = torch.cuda.get_device_properties(device).total_memory * DEFAULT_VRAM_SHARE
        else:
            vram = 0
        return cls(int(vram), int(ram))


def device_total_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return psutil.virtual_memory().total


@dataclass(frozen=True)
class ModelEvent:
    action: str  # "load", "move" or "evict"
    name: str
    source: Tier
    target: Tier
    size_bytes: int
    seconds: float
    at: float  # wall-clock time, for display
    device: str  # where VRAM is: "cuda", "mps", or "cpu" for a stand-in

    @property
    def bytes_per_second(self) -> float:
        return self.size_bytes / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        where = {Tier.VRAM: self.device, Tier.RAM: "RAM", Tier.DISK: "disk"}
        size = _format_bytes(self.size_bytes)
        if self.action == "evict":
            return f"evicted {self.name} from {where[self.source]}: {size} freed in {self.seconds:.2f} s"
        rate = f"{self.bytes_per_second / GB:.1f} GB/s"
        verb = "loaded" if self.action == "load" else "moved"
        route = f"from {where[self.source]} to {where[self.target]}"
        return f"{verb} {self.name} {route}: {size} in {self.seconds:.2f} s ({rate})"


@dataclass(frozen=True)
class Placement:
    """Where one cached model is now, for the UI and the API's memory report."""

    name: str
    path: Path
    tier: Tier
    size_bytes: int
    memory_mode: MemoryMode
    in_use: bool
    last_event: ModelEvent | None


@dataclass
class _Entry:
    model: LoadedModel
    tier: Tier
    last_used: int
    size: int  # bytes of all its tensors; measured at load and after `modify`, not per call
    leases: int = 0
    offloader: Offloader | None = None
    last_event: ModelEvent | None = None

    @property
    def mode(self) -> MemoryMode:
        return self.offloader.mode if self.offloader else MemoryMode.NORMAL


class ModelCache:
    """Thread-safe. `use(path)` gives a job its model and keeps it in place until the job ends."""

    def __init__(
        self,
        loader: Callable[[Path], LoadedModel],
        device: torch.device,
        budgets: MemoryBudgets,
        memory_mode: MemoryMode = MemoryMode.AUTO,
        *,
        separate_device_memory: bool | None = None,
        device_bytes: int | None = None,
        history: int = 200,
    ) -> None:
        """`loader(path)` builds a model in host memory. `separate_device_memory=True` with a CPU
        device is a stand-in GPU: tiers and budgets behave as with CUDA, moves cost nothing."""
        self._loader = loader
        self.device = device
        self.budgets = budgets
        self.memory_mode = memory_mode
        self._separate = device.type != "cpu" if separate_device_memory is None else separate_device_memory
        self._device_bytes = device_bytes if device_bytes is not None else device_total_bytes(device)
        self._pin = pin_available(device)
        self._entries: dict[str, _Entry] = {}
        self._promoting: _Entry | None = None  # leaving RAM for VRAM while room is made
        self._events: deque[ModelEvent] = deque(maxlen=history)
        self._clock = itertools.count()
        self._lock = threading.RLock()  # placement changes, one at a time
        self._leases = threading.Lock()  # lease counts only, so a finishing job never waits on a load

    # -- what jobs and the UI call ----------------------------------------------------------
    @contextmanager
    def use(self, path: Path) -> Iterator[LoadedModel]:
        """The model on the compute device for one job; it cannot be moved or evicted meanwhile."""
        with self._lock:
            entry = self._activate(Path(path))
            with self._leases:
                entry.leases += 1
        try:
            yield entry.model
        finally:
            with self._leases:
                entry.leases -= 1
            if entry.offloader is not None:
                entry.offloader.park()

    def activate(self, path: Path) -> LoadedModel:
        """Make `path` the model on the compute device now (a checkpoint switch)."""
        with self._lock:
            return self._activate(Path(path)).model

    def prefetch(self, path: Path) -> LoadedModel:
        """Have `path` at least in RAM, touching no model a job is using (a switch during a job)."""
        with self._lock:
            return self._entry(Path(path)).model

    def modify(self, path: Path, change: Callable[[LoadedModel], None]) -> None:
        """Run `change(model)` (e.g. a VAE swap) with no offload hooks attached, then re-place it."""
        with self._lock:
            entry = self._activate(Path(path))
            offloader = entry.offloader
            if offloader is not None:
                offloader.detach()
                entry.offloader = None
            change(entry.model)
            entry.size = model_bytes(entry.model)
            if offloader is not None:
                entry.offloader = attach_offload(entry.model, offloader.mode, self.device)

    def set_budgets(self, budgets: MemoryBudgets) -> None:
        """New budgets apply at once: models over them move down a tier (those in use stay)."""
        with self._lock:
            self.budgets = budgets
            self._make_room(Tier.VRAM, 0)
            self._make_room(Tier.RAM, 0)

    def unload(self, path: Path | None = None) -> None:
        """Free VRAM: demote `path` (or every unused model) to RAM, or to disk if RAM is full."""
        with self._lock:
            for entry in self._matching(path):
                if self._is_free(entry) and entry.tier is Tier.VRAM:
                    self._demote(entry)

    def evict(self, path: Path | None = None) -> None:
        """Drop `path` (or every unused model) from memory altogether."""
        with self._lock:
            for entry in self._matching(path):
                if self._is_free(entry):
                    self._drop(entry)

    def cached(self, path: Path) -> LoadedModel | None:
        """The model of `path` if it is in memory (any tier but disk); never loads it."""
        entry = self._entries.get(_key(path))
        return entry.model if entry else None

    def tier(self, path: Path) -> Tier:
        entry = self._entries.get(_key(path))
        return entry.tier if entry else Tier.DISK

    def memory_mode_of(self, path: Path) -> MemoryMode:
        entry = self._entries.get(_key(path))
        return entry.mode if entry else MemoryMode.NORMAL

    def placements(self) -> list[Placement]:
        with self._lock:
            entries = sorted(self._entries.items(), key=lambda item: -item[1].last_used)
            return [
                Placement(e.model.name, e.model.path, e.tier, e.size, e.mode, e.leases > 0, e.last_event)
                for _, e in entries
            ]

    def events(self) -> list[ModelEvent]:
        return list(self._events)

    def used_bytes(self, tier: Tier) -> int:
        with self._lock:
            return sum(e.size for e in self._entries.values() if e.tier is tier and e is not self._promoting)

    # -- placement logic ----------------------------------------------------------------------
    def _activate(self, path: Path) -> _Entry:
        entry = self._entry(path)
        if not self._separate:
            return entry
        encoders = [module_bytes(encoder) for encoder in entry.model.text_encoders]
        mode = choose_memory_mode(self.memory_mode, self.device, entry.size, self._device_bytes, encoders)
        self._release_resident(keep=entry)
        if mode is MemoryMode.NORMAL:
            if entry.offloader is not None:
                entry.offloader.detach()
                entry.offloader = None
            if entry.tier is Tier.RAM:
                # Room is made before the move, and the RAM this model is about to free counts as free.
                self._promoting = entry
                try:
                    self._make_room(Tier.VRAM, entry.size, keep=entry)
                finally:
                    self._promoting = None
                self._move(entry, Tier.VRAM)
            return entry
        if entry.tier is Tier.VRAM:
            self._move(entry, Tier.RAM)
        if entry.offloader is None or entry.offloader.mode is not mode:
            if entry.offloader is not None:
                entry.offloader.detach()
            # The working set needs the device to itself.
            self._make_room(Tier.VRAM, self.budgets.vram_bytes + 1, keep=entry)
            entry.offloader = attach_offload(entry.model, mode, self.device)
            log.info("%s runs in %s mode on %s", entry.model.name, mode.value, self.device)
        return entry

    def _release_resident(self, keep: _Entry) -> None:
        """Detach other models' text-offload hooks, which keep their denoiser on the device while
        their entry counts as RAM: the model about to run needs that room."""
        for other in self._entries.values():
            offloader = other.offloader
            if (
                other is not keep
                and other.leases == 0
                and offloader is not None
                and offloader.resident is not None
            ):
                offloader.detach()
                other.offloader = None

    def _entry(self, path: Path) -> _Entry:
        """The cached entry for `path` (loaded into RAM if it was on disk), marked as just used."""
        entry = self._entries.get(_key(path)) or self._load(path)
        entry.last_used = next(self._clock)
        return entry

    def _load(self, path: Path) -> _Entry:
        estimate = path.stat().st_size if path.is_file() else 0
        self._make_room(Tier.RAM, estimate)
        started = time.perf_counter()
        model = self._loader(path)
        seconds = time.perf_counter() - started
        entry = _Entry(model, Tier.RAM, next(self._clock), model_bytes(model))
        self._entries[_key(path)] = entry
        self._record(entry, "load", Tier.DISK, Tier.RAM, entry.size, seconds)
        self._make_room(Tier.RAM, 0, keep=entry)  # the estimate may have been low (fp32 files as fp32)
        return entry

    def _make_room(self, tier: Tier, need: int, keep: _Entry | None = None) -> None:
        budget = self.budgets.vram_bytes if tier is Tier.VRAM else self.budgets.ram_bytes
        while self.used_bytes(tier) + need > budget:
            candidates = [
                e for e in self._entries.values() if e.tier is tier and e is not keep and self._is_free(e)
            ]
            if not candidates:
                if need <= budget:
                    log.warning(
                        "%s is over its budget (%.2f of %.2f GB) with models in use",
                        tier.value.upper(),
                        (self.used_bytes(tier) + need) / GB,
                        budget / GB,
                    )
                return
            victim = min(candidates, key=lambda e: e.last_used)
            if tier is Tier.VRAM:
                self._demote(victim)
            else:
                self._drop(victim)

    def _demote(self, entry: _Entry) -> None:
        size = entry.size
        self._make_room(Tier.RAM, size, keep=entry)
        if self.used_bytes(Tier.RAM) + size <= self.budgets.ram_bytes:
            self._move(entry, Tier.RAM)
        else:
            self._drop(entry)

    def _move(self, entry: _Entry, target: Tier) -> None:
        source = entry.tier
        device = self.device if target is Tier.VRAM else HOST
        started = time.perf_counter()
        moved = move_model(entry.model, device, pin=self._pin and target is Tier.RAM)
        seconds = time.perf_counter() - started
        entry.tier = target
        self._record(entry, "move", source, target, moved or entry.size, seconds)

    def _drop(self, entry: _Entry) -> None:
        if entry.offloader is not None:
            entry.offloader.detach()
        key = next(k for k, e in self._entries.items() if e is entry)
        source, size, name = entry.tier, entry.size, entry.model.name
        started = time.perf_counter()
        del self._entries[key]
        # Callers may still hold the entry; it must not keep the tensors alive.
        entry.model = None  # type: ignore[assignment]
        entry.offloader = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        seconds = time.perf_counter() - started
        self._events.append(
            ModelEvent("evict", name, source, Tier.DISK, size, seconds, time.time(), self.device.type)
        )
        log.info(self._events[-1].describe())

    def _record(
        self, entry: _Entry, action: str, source: Tier, target: Tier, size: int, seconds: float
    ) -> None:
        event = ModelEvent(
            action, entry.model.name, source, target, size, seconds, time.time(), self.device.type
        )
        entry.last_event = event
        self._events.append(event)
        log.info(event.describe())

    def _is_free(self, entry: _Entry) -> bool:
        with self._leases:
            return entry.leases == 0

    def _matching(self, path: Path | None) -> list[_Entry]:
        if path is None:
            return list(self._entries.values())
        entry = self._entries.get(_key(path))
        return [entry] if entry else []


def _format_bytes(size: int) -> str:
    return f"{size / GB:.2f} GB" if size >= GB else f"{size / 1e6:.1f} MB"


def _key(path: Path) -> str:
    return str(Path(path).resolve())

"""From the flags to running workers: whether to use Ray at all, how many workers on which
devices, and starting (or joining) the Ray cluster. Deciding needs no Ray; starting does."""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webui.cluster.spec import WorkerSpec

if TYPE_CHECKING:
    from webui.cluster.executor import ClusterExecutor
    from webui.settings import Settings
    from webui.studio import Studio

log = logging.getLogger(__name__)

# The project's root, put on the workers' import path: every machine keeps its checkout there.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
NEEDS_RAY = "--workers and --ray-address need Ray: pip install -r requirements-cluster.txt"


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def wants_cluster(workers: int | None, address: str | None, visible_gpus: int) -> bool:
    """Whether jobs run on Ray workers: when asked for (`--workers N` with N >= 1, `--ray-address`),
    or by default when several GPUs are visible and Ray is installed; else in this process."""
    if address:
        return True
    if workers is not None:
        return workers >= 1
    return visible_gpus > 1 and ray_installed()


def local_specs(count: int | None, device: str, gpus: int, cpus: int) -> list[WorkerSpec]:
    """Workers for a Ray instance on this machine: one per GPU by default; with more workers than
    GPUs they share them; on CPU (`--device cpu`, or no GPU) each takes its share of the cores."""
    on_gpu = device != "cpu" and gpus > 0
    count = count or (gpus if on_gpu else 1)
    if on_gpu:
        share = min(1.0, gpus / count)
        return [WorkerSpec(f"w{n + 1}", "cuda", {"num_gpus": share, "num_cpus": 1}) for n in range(count)]
    cores = max(1, cpus // count)
    return [WorkerSpec(f"w{n + 1}", "cpu", {"num_cpus": cores}) for n in range(count)]


def cluster_specs(count: int | None, device: str, resources: dict[str, float]) -> list[WorkerSpec]:
    """Workers on a cluster we join: one per GPU it has (or `count`), or on its CPUs with
    `--device cpu` (one per node by default), spread over its machines."""
    gpus = int(resources.get("GPU", 0))
    if device != "cpu" and gpus > 0:
        return local_specs(count or gpus, device, gpus, int(resources.get("CPU", 1)))
    nodes = max(
        1, int(sum(1 for key in resources if key.startswith("node:") and key != "node:__internal_head__"))
    )
    count = count or nodes
    cores = max(1, int(resources.get("CPU", 1)) // count)
    return [
        WorkerSpec(f"w{n + 1}", "cpu", {"num_cpus": cores, "scheduling_strategy": "SPREAD"})
        for n in range(count)
    ]


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Raise ConnectionError at once for a head node nothing answers at: Ray itself would keep
    retrying for minutes. Only plain host:port addresses are checked ("auto", ray://... are Ray's)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise ConnectionError(
            f"no Ray head node answers at {address} ({error}); start one there with `ray start --head`"
        ) from None


def start_cluster(
    studio: Studio,
    workers: int | None,
    address: str | None,
    *,
    gpus: int = 0,
    init_options: dict[str, Any] | None = None,
) -> ClusterExecutor:
    """Start Ray here (or join `address`) and the workers; they load in the background."""
    import ray

    from webui.cluster.executor import ClusterExecutor
    from webui.cluster.pool import WorkerPool

    settings: Settings = studio.settings
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
    path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    options: dict[str, Any] = {
        "runtime_env": {"env_vars": {"PYTHONPATH": path}},
        "log_to_driver": True,
        **(init_options or {}),
    }
    if address:
        check_reachable(address)
        ray.init(address=address, **options)
        specs = cluster_specs(workers, settings.device, ray.cluster_resources())
    else:
        options.setdefault("include_dashboard", False)
        cpus = os.cpu_count() or 1
        specs = local_specs(workers, settings.device, gpus, options.get("num_cpus", cpus))
        needs = sum(spec.options.get("num_cpus", 0) for spec in specs)
        options.setdefault("num_cpus", max(cpus, needs))
        ray.init(**options)
    log.info("starting %d worker(s): %s", len(specs), ", ".join(f"{s.id} on {s.device}" for s in specs))
    return ClusterExecutor(WorkerPool(settings, specs), studio)

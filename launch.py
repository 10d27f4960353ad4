"""Start the web UI and API: `python launch.py [--port 7860] [--listen] [--auth user:pass] ...`."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

import webui  # noqa: F401  (sets the offline environment before torch, diffusers and gradio load)
from webui.settings import Settings, app_parser, flags_given


def main(argv: list[str] | None = None) -> int:
    args = app_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from webui.api.auth import Credentials
    from webui.jobs import JobQueue
    from webui.jobs.store import JobStore
    from webui.live_settings import LiveSettings
    from webui.model_manager.state_dict import CheckpointError
    from webui.server import create_app, uvicorn_config
    from webui.settings_file import settings_from_args
    from webui.studio import Studio

    try:
        settings, settings_file = settings_from_args(args)
        credentials = Credentials.from_flags(
            args.auth, Path(args.auth_file) if args.auth_file else None, args.admin
        )
        tls = _tls(settings)
        studio = Studio(settings)
        clustered = _wants_cluster(args, settings)
        if not clustered:  # workers load their own models; this process needs none on its device
            studio.models.model()  # load now, so a broken checkpoint is reported before the page opens
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for unusable in studio.models.registry.unusable():
        logging.warning("skipping %s: %s", unusable.path, unusable.error)
    if settings.listen and credentials is None:
        logging.warning("--listen without --auth: anyone on the network can use this server")
    studio.models.start_background_hashing()
    if studio.models.demo_mode:
        print(f"\n*** {studio.models.demo_message}\n", file=sys.stderr)
    # Jobs outlive a restart: waiting ones run again, finished ones stay listed with their images.
    try:
        executor = _start_cluster(args, studio) if clustered else None
    except Exception as error:  # Ray's own (ConnectionError for a wrong address, ...): say it plainly
        print(f"error: could not start or join the Ray cluster: {error}", file=sys.stderr)
        return 2
    jobs = JobQueue(studio, settings.limits, store=JobStore.in_data_dir(settings.data_dir), executor=executor)
    live = LiveSettings(studio, jobs, settings_file, pinned=frozenset(flags_given(args)))
    app = create_app(studio, jobs, credentials=credentials, cmd_flags=vars(args), live_settings=live)
    host = "0.0.0.0" if settings.listen else "127.0.0.1"
    scheme = "https" if tls else "http"
    print(
        f"Serving on {scheme}://{'localhost' if host == '127.0.0.1' else host}:{settings.port}",
        file=sys.stderr,
    )
    import uvicorn

    # HTTP is served from a thread; jobs run on the main thread, where PyTorch's CPU threads are fastest.
    server = uvicorn.Server(uvicorn_config(app, host, settings.port, tls))
    serving = threading.Thread(target=server.run, name="http-server", daemon=True)
    serving.start()
    signal.signal(signal.SIGTERM, _stop_on_signal)  # a service manager's stop: finish as Ctrl+C does
    try:
        jobs.run(until=lambda: not serving.is_alive())
    except KeyboardInterrupt:
        print("\nstopping", file=sys.stderr)
    finally:
        server.should_exit = True
        jobs.stop()
        if executor is not None:
            executor.close()
        serving.join(10)
    return 0 if server.started else 1


def _visible_gpus(settings: Settings) -> int:
    if settings.device not in ("auto", "cuda"):
        return 0
    import torch

    return torch.cuda.device_count()


def _wants_cluster(args, settings: Settings) -> bool:
    """Raises ValueError when Ray was asked for and is not installed."""
    from webui.cluster.start import NEEDS_RAY, ray_installed, wants_cluster

    asked = args.ray_address or (args.workers or 0) >= 1
    if asked and not ray_installed():
        raise ValueError(NEEDS_RAY)
    return wants_cluster(args.workers, args.ray_address, _visible_gpus(settings))


def _start_cluster(args, studio):
    from webui.cluster.start import start_cluster

    return start_cluster(studio, args.workers, args.ray_address, gpus=_visible_gpus(studio.settings))


def _stop_on_signal(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _tls(settings: Settings):
    from webui.server import Tls

    if bool(settings.tls_keyfile) != bool(settings.tls_certfile):
        raise ValueError("HTTPS needs both --tls-keyfile and --tls-certfile")
    if settings.tls_keyfile is None or settings.tls_certfile is None:
        return None
    for path in (settings.tls_keyfile, settings.tls_certfile):
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
    return Tls(settings.tls_keyfile, settings.tls_certfile)


if __name__ == "__main__":
    raise SystemExit(main())

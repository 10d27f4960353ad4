"""Start the web UI: `python launch.py [--port 7860] [--listen] [--ckpt NAME] ...`."""

from __future__ import annotations

import logging
import sys

import webui  # noqa: F401  (sets the offline environment before torch, diffusers and gradio load)
from webui.settings import Settings, app_parser


def main(argv: list[str] | None = None) -> int:
    args = app_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from webui.model_manager.state_dict import CheckpointError
    from webui.studio import Studio
    from webui.ui.app import build_ui, launch_options

    settings = Settings.from_args(args)
    try:
        studio = Studio(settings)
        studio.model()  # load now, so a broken checkpoint is reported before the page opens
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for unusable in studio.registry.unusable():
        logging.warning("skipping %s: %s", unusable.path, unusable.error)
    studio.start_background_hashing()
    if studio.demo_mode:
        print(f"\n*** {studio.demo_message}\n", file=sys.stderr)
    host = "0.0.0.0" if settings.listen else "127.0.0.1"
    build_ui(studio).queue().launch(server_name=host, server_port=settings.port, **launch_options(studio))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One typed settings object, built from command-line flags and the saved settings file."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from webui.engine.device_choices import DEVICES, PRECISIONS
from webui.engine.speed_options import ATTENTION_KERNELS, COMPILE_MODES, SWITCHES, SpeedOptions
from webui.jobs.limits import Limits, parse_size
from webui.outputs.naming import DEFAULT_PATTERN, check_pattern

MEMORY_MODES = ("auto", "normal", "text-offload", "medvram", "lowvram")
VAE_TILING = ("auto", "on", "off")
# Live previews: a linear map of the latent (free), TAESD from models/VAE-approx, the full VAE, or none.
PREVIEW_METHODS = ("linear", "taesd", "vae", "none")

DEFAULT_PORT = 7860
ALL_EXTENSIONS = "all"


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    ckpt_dir: Path  # scanned besides DATA_DIR/models/Stable-diffusion; new files go here
    outputs_dir: Path
    models_config: Path | None = None  # ComfyUI's extra_model_paths.yaml format: more model folders
    ckpt: str | None = None  # a checkpoint title, file name or path to start with
    vae: str = "Automatic"  # "Automatic", "None" (the checkpoint's own) or a file in models/VAE
    vram_budget_gb: float | None = None  # models kept on the GPU; None: 60% of its memory
    ram_budget_gb: float | None = None  # models kept warm in RAM; None: half the machine's RAM
    memory_mode: str = "auto"  # one of MEMORY_MODES
    vae_tiling: str = "auto"  # tiled VAE decode/encode: auto (large images, low-memory modes), on, off
    device: str = "auto"
    precision: str = "auto"
    watermark: bool = True
    use_ema: bool = True  # files with CompVis EMA weights load with them (--no-ema: the raw ones)
    ema_choices: Mapping[str, bool] = field(default_factory=dict)  # per checkpoint name, over use_ema
    safety_checker: bool = False  # screen every image with models/safety_checker (--safety-checker)
    filename_pattern: str = DEFAULT_PATTERN  # after the number: "00012-<pattern>.png"
    preview_method: str = "linear"
    preview_period: int = 1  # a preview every this many steps
    port: int = DEFAULT_PORT
    listen: bool = False
    tls_keyfile: Path | None = None  # with tls_certfile: serve HTTPS
    tls_certfile: Path | None = None
    limits: Limits = field(default_factory=Limits)
    speed: SpeedOptions = field(default_factory=SpeedOptions)  # how the UNet runs (flags only)
    # Extensions by manifest name that do not load; from the Settings tab, applies at the next start.
    disabled_extensions: tuple[str, ...] = ()
    skipped_extensions: tuple[str, ...] = ()  # --disable-extensions for this run ("all": every one)
    extension_settings: Mapping[str, Mapping[str, object]] = field(default_factory=dict)  # by extension
    extension_timeout_s: float = 10.0  # a hook taking longer stops its extension for the session
    allow_extension_install: bool = False  # install from a URL even when listening on the network

    def __post_init__(self) -> None:
        """Checked here, so flags, the settings file and the Settings tab are refused alike."""
        check_pattern(self.filename_pattern)
        if self.preview_method not in PREVIEW_METHODS:
            raise ValueError(f"preview method must be one of {', '.join(PREVIEW_METHODS)}")
        if isinstance(self.preview_period, bool) or not isinstance(self.preview_period, int):
            raise ValueError("the preview period must be a whole number of steps")
        if not 1 <= self.preview_period <= 1000:
            raise ValueError("the preview period must be from 1 to 1000 steps")
        if not 0 < self.extension_timeout_s <= 3600:
            raise ValueError("the extension timeout must be more than 0 and at most 3600 seconds")
        if isinstance(self.disabled_extensions, str) or not all(
            isinstance(name, str) for name in self.disabled_extensions
        ):
            raise ValueError("disabled extensions must be a list of extension names")
        if not isinstance(self.extension_settings, Mapping) or not all(
            isinstance(section, Mapping) for section in self.extension_settings.values()
        ):
            raise ValueError("extension settings must map each extension's name to its settings")
        if not isinstance(self.ema_choices, Mapping) or not all(
            isinstance(name, str) and isinstance(use, bool) for name, use in self.ema_choices.items()
        ):
            raise ValueError("ema choices must map checkpoint names to true (EMA weights) or false (raw)")
        for name in ("vram_budget_gb", "ram_budget_gb"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1_000_000:
                raise ValueError(f"{name.replace('_gb', '').replace('_', ' ')} must be 0 or more GB")

    @classmethod
    def for_data_dir(cls, data_dir: Path, **overrides: object) -> Settings:
        """The layout people know: models/Stable-diffusion and outputs/ under one folder."""
        data_dir = Path(data_dir)
        values: dict[str, object] = {
            "data_dir": data_dir,
            "ckpt_dir": data_dir / "models" / "Stable-diffusion",
            "outputs_dir": data_dir / "outputs",
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def from_args(cls, args: argparse.Namespace, saved: Mapping[str, object] | None = None) -> Settings:
        """Flags given on the command line win over `saved` (the settings file), which wins over defaults."""
        given = flags_given(args) - {"limits"}  # limit flags win one by one, in _limits
        values = {key: value for key, value in (saved or {}).items() if key not in given}
        limits = _limits(args, values.pop("limits", None))
        flagged = {
            "outputs_dir": _path(args.outputs_dir),
            "models_config": _path(getattr(args, "models_config", None)),
            "vram_budget_gb": args.vram_budget,
            "ram_budget_gb": args.ram_budget,
            "watermark": False if args.no_watermark else None,
            "use_ema": False if getattr(args, "no_ema", False) else None,
            "safety_checker": True if getattr(args, "safety_checker", False) else None,
            "preview_method": getattr(args, "preview_method", None),
            "preview_period": getattr(args, "preview_period", None),
            "extension_timeout_s": getattr(args, "extension_timeout", None),
            "allow_extension_install": getattr(args, "enable_insecure_extension_access", None) or None,
        }
        if getattr(args, "disable_extensions", None):
            values["skipped_extensions"] = _named_extensions(args.disable_extensions)
        values.update({key: value for key, value in flagged.items() if value is not None})
        return cls.for_data_dir(
            Path(args.data_dir),
            ckpt_dir=Path(args.ckpt_dir) if args.ckpt_dir else None,
            ckpt=args.ckpt,
            vae=args.vae,
            memory_mode=_memory_mode(args),
            vae_tiling=args.vae_tiling,
            device=args.device,
            precision=args.precision,
            port=getattr(args, "port", DEFAULT_PORT),
            listen=getattr(args, "listen", False),
            tls_keyfile=_path(getattr(args, "tls_keyfile", None)),
            tls_certfile=_path(getattr(args, "tls_certfile", None)),
            limits=limits,
            speed=speed_options(args),
            **values,
        )


# The settings a user may change while the app runs (the Settings tab), kept in the settings file.
EDITABLE_FIELDS = (
    "outputs_dir",
    "filename_pattern",
    "watermark",
    "ema_choices",
    "preview_method",
    "preview_period",
    "vram_budget_gb",
    "ram_budget_gb",
    "limits",
    "disabled_extensions",
    "extension_settings",
    "extension_timeout_s",
)
_FLAG_OF_FIELD = {
    "outputs_dir": "outputs_dir",
    "watermark": "no_watermark",
    "preview_method": "preview_method",
    "preview_period": "preview_period",
    "vram_budget_gb": "vram_budget",
    "ram_budget_gb": "ram_budget",
    "extension_timeout_s": "extension_timeout",
}
_LIMIT_FLAGS = {
    "max_pixels": "max_size",
    "max_batch_size": "max_batch_size",
    "max_batch_count": "max_batch_count",
    "max_steps": "max_steps",
    "max_body_mb": "max_body_mb",
    "max_queued_per_user": "max_queued",
    "max_prompt_chars": "max_prompt_chars",
}


def flags_given(args: argparse.Namespace) -> set[str]:
    """Editable fields set by a flag this run (the Settings tab says a restart would undo a change)."""
    given = {name for name, flag in _FLAG_OF_FIELD.items() if getattr(args, flag, None) not in (None, False)}
    if any(getattr(args, flag, None) is not None for flag in _LIMIT_FLAGS.values()):
        given.add("limits")
    return given


def _named_extensions(flag: str) -> tuple[str, ...]:
    """`--disable-extensions` alone: ("all",); with names: those."""
    return tuple(name.strip() for name in flag.split(",") if name.strip())


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _limits(args: argparse.Namespace, saved: object = None) -> Limits:
    """Limit flags given win, one by one, over saved limits, which win over the defaults."""
    base = saved if isinstance(saved, Limits) else Limits()
    flagged = {name: getattr(args, flag, None) for name, flag in _LIMIT_FLAGS.items()}
    return replace(base, **{name: value for name, value in flagged.items() if value is not None})


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by the app and the command-line generator."""
    parser.add_argument("--data-dir", default=".", help="folder holding models/ and outputs/ (default: .)")
    parser.add_argument("--ckpt-dir", help="checkpoint folder (default: DATA_DIR/models/Stable-diffusion)")
    parser.add_argument("--outputs-dir", help="where images are saved (default: DATA_DIR/outputs)")
    parser.add_argument(
        "--models-config",
        help="more model folders, in ComfyUI's extra_model_paths.yaml format (DATA_DIR may be an "
        "A1111 or a ComfyUI install)",
    )
    parser.add_argument(
        "--ckpt", help="checkpoint to load first: a file name in the checkpoint folder, or a path"
    )
    parser.add_argument("--vae", help='VAE to use: "Automatic" (default), "None" or a file in models/VAE')
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where to run (default: auto)")
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="auto", help="auto: fp16 on CUDA, fp32 on CPU"
    )
    parser.add_argument("--no-watermark", action="store_true", help="do not embed the invisible watermark")
    parser.add_argument(
        "--no-ema",
        action="store_true",
        help="load checkpoints that hold EMA weights with their raw weights instead",
    )
    parser.add_argument(
        "--safety-checker",
        action="store_true",
        help="blur images the safety checker in DATA_DIR/models/safety_checker flags",
    )
    parser.add_argument(
        "--preview-method", choices=PREVIEW_METHODS, help="live previews: linear (default), taesd, vae, none"
    )
    parser.add_argument(
        "--preview-period", type=int, metavar="STEPS", help="a preview every N steps (default 1)"
    )
    memory = parser.add_argument_group("memory")
    memory.add_argument("--vram-budget", type=float, metavar="GB", help="GPU memory for cached models")
    memory.add_argument("--ram-budget", type=float, metavar="GB", help="RAM for models kept warm")
    memory.add_argument(
        "--memory-mode",
        choices=MEMORY_MODES,
        default="auto",
        help="auto picks from the GPU's size; text-offload keeps the denoiser and VAE on the GPU and "
        "brings each text encoder only to encode",
    )
    memory.add_argument(
        "--medvram", action="store_true", help="keep only the working component on the GPU (small GPUs)"
    )
    memory.add_argument(
        "--lowvram", action="store_true", help="keep only the working layer on the GPU (very small GPUs)"
    )
    memory.add_argument(
        "--vae-tiling", choices=VAE_TILING, default="auto", help="decode in tiles (auto: large images)"
    )
    add_speed_flags(parser)


def add_speed_flags(parser: argparse.ArgumentParser) -> None:
    """The speed options' flags, shared by the app, the command-line generator and the benchmark."""
    speed = parser.add_argument_group("speed (docs/benchmarks.md measures each)")
    speed.add_argument(
        "--attention",
        choices=ATTENTION_KERNELS,
        default="auto",
        help="attention kernel: auto/sdpa (PyTorch's flash/memory-efficient), xformers, math",
    )
    speed.add_argument(
        "--channels-last", choices=SWITCHES, default="auto", help="NHWC convolutions (auto: on CUDA)"
    )
    speed.add_argument(
        "--fuse-qkv", choices=SWITCHES, default="auto", help="fused q/k/v projections (auto: on CUDA)"
    )
    speed.add_argument(
        "--no-batch-cond-uncond",
        action="store_true",
        help="run the negative and positive prompt as separate UNet calls (less memory, slower)",
    )
    speed.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default="off",
        help="torch.compile the UNet: on, or max (autotuned); each new size compiles once, then is cached",
    )
    speed.add_argument(
        "--cuda-graphs", action="store_true", help="with --compile: replay each size as one CUDA graph"
    )
    speed.add_argument(
        "--cpu-bf16",
        choices=SWITCHES,
        default="auto",
        help="CPU: UNet and VAE decoder matmuls in bf16, fp32 weights kept "
        "(auto: full-size fp32 models on CPUs with AMX or AVX512-BF16)",
    )


def speed_options(args: argparse.Namespace) -> SpeedOptions:
    return SpeedOptions(
        attention=getattr(args, "attention", "auto"),
        channels_last=getattr(args, "channels_last", "auto"),
        fuse_qkv=getattr(args, "fuse_qkv", "auto"),
        batch_cond_uncond=not getattr(args, "no_batch_cond_uncond", False),
        compile=getattr(args, "compile", "off"),
        cuda_graphs=getattr(args, "cuda_graphs", False),
        cpu_bf16=getattr(args, "cpu_bf16", "auto"),
    )


def _worker_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of workers") from None
    if not 0 <= count <= 1024:
        raise argparse.ArgumentTypeError("the number of workers must be from 0 to 1024")
    return count


def _memory_mode(args: argparse.Namespace) -> str:
    if args.lowvram:
        return "lowvram"
    if args.medvram:
        return "medvram"
    return args.memory_mode


def app_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch.py", description="Stable Diffusion studio web UI")
    add_model_flags(parser)
    server = parser.add_argument_group("serving")
    server.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default: {DEFAULT_PORT}")
    server.add_argument(
        "--listen", action="store_true", help="serve on all interfaces (the LAN), not just 127.0.0.1"
    )
    server.add_argument(
        "--auth", metavar="USER:PASS[,USER:PASS]", help="require a login on every page, API and file route"
    )
    server.add_argument("--auth-file", metavar="FILE", help="logins from a file, one user:password per line")
    server.add_argument(
        "--admin", metavar="USER[,USER]", help="users who may see and stop anyone's jobs and change limits"
    )
    server.add_argument("--tls-keyfile", metavar="FILE", help="serve HTTPS with this private key (PEM)")
    server.add_argument("--tls-certfile", metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    extensions = parser.add_argument_group("extensions (docs/extensions.md)")
    extensions.add_argument(
        "--disable-extensions",
        nargs="?",
        const=ALL_EXTENSIONS,
        metavar="NAME[,NAME]",
        help="start without these extensions (without names: without any)",
    )
    extensions.add_argument(
        "--extension-timeout",
        type=float,
        metavar="SECONDS",
        help="a hook running longer stops its extension until restart (default 10)",
    )
    extensions.add_argument(
        "--enable-insecure-extension-access",
        action="store_true",
        help="allow installing extensions from a URL even with --listen (admins only, with --auth)",
    )
    cluster = parser.add_argument_group(
        "several workers on Ray (docs/cluster.md; needs requirements-cluster.txt)"
    )
    cluster.add_argument(
        "--workers",
        type=_worker_count,
        metavar="N",
        help="run jobs on N Ray workers on this machine (default: one per GPU when there are several; "
        "0: in this process, as with one GPU)",
    )
    cluster.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="join the Ray cluster at ADDR (host:port of `ray start --head`) and run workers on its GPUs "
        "(its CPUs with --device cpu)",
    )
    defaults = Limits()
    limits = parser.add_argument_group("limits on one request")
    # No flag defaults: an unset flag leaves the value saved from the Settings tab in place.
    limits.add_argument(
        "--max-size",
        type=parse_size,
        metavar="WxH",
        help="largest width x height in pixels (default 2048x2048)",
    )
    for flag, kind, default, metavar, what in (
        ("--max-batch-size", int, defaults.max_batch_size, "N", "images sampled together"),
        ("--max-batch-count", int, defaults.max_batch_count, "N", "batches in one job"),
        ("--max-steps", int, defaults.max_steps, "N", "sampling steps"),
        ("--max-body-mb", float, defaults.max_body_mb, "MB", "largest request body"),
        ("--max-queued", int, defaults.max_queued_per_user, "N", "waiting jobs per user"),
        ("--max-prompt-chars", int, defaults.max_prompt_chars, "N", "characters in a prompt, styles applied"),
    ):
        limits.add_argument(flag, type=kind, metavar=metavar, help=f"{what} (default {default:g})")
    return parser

"""The choices of `--device` and `--precision`: torch-free, so settings and flags load without torch
(webui.engine.devices turns them into a torch device and dtype)."""

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DEVICES = ("auto", "cuda", "mps", "cpu")

"""Stable Diffusion studio: an offline generation engine with a browser UI and HTTP API."""

import os

__version__ = "0.1.0"

# Nothing is ever fetched at run time: tell the Hugging Face libraries and Gradio before they load.
for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "DISABLE_TELEMETRY": "1",
    # transformers draws a "Loading weights" bar for every LoRA it adds to a text encoder.
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}.items():
    os.environ.setdefault(_name, _value)

"""Stable Diffusion studio: an offline generation engine with a browser UI and HTTP API."""

__version__ = "0.1.0"

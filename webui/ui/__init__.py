"""Gradio Blocks for the browser UI: layout and event wiring only, no torch code."""

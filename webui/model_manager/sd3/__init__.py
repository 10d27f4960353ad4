"""Stable Diffusion 3 and 3.5: detection, conversion and loading of Stability's single files."""

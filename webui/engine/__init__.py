"""The generation engine: torch and diffusers only, no web framework."""

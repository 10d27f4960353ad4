"""Find, identify and load checkpoints offline; imports no web framework."""

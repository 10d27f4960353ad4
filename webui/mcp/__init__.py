"""The Model Context Protocol face of the server: `/mcp` (server.py) and a stdio bridge (__main__.py)."""

"""A hostile run against a real server (issue 20): `python -m tests.hostile`. Not collected by
pytest (no test_ files); docs/reliability.md has its figures and how to rerun it."""

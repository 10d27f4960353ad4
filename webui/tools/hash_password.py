"""Print a password's stored form for `--auth-file`: `python -m webui.tools.hash_password [--user NAME]`.

Asks for the password twice at a terminal; with input piped in, reads one line. The output,
`pbkdf2_sha256$ITERATIONS$SALT$HASH` (or `NAME:pbkdf2_sha256$...` with --user), goes in the
file in place of the plain password.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from webui.api.passwords import ITERATIONS, hash_password


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise ValueError("the two passwords differ")
    return first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--user", help="print NAME:HASH, a whole --auth-file line")
    parser.add_argument("--iterations", type=int, default=ITERATIONS, help=f"default {ITERATIONS}")
    args = parser.parse_args(argv)
    if args.user is not None and (":" in args.user or not args.user.strip()):
        parser.error("--user must be a name without ':'")
    try:
        stored = hash_password(_read_password(), args.iterations)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.user.strip()}:{stored}" if args.user else stored)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`walbroker token new`: a fresh bearer token, shown once, and its line for the token file.

The token file holds only the SHA-256 of each token, so a lost token cannot be recovered:
make a new one and replace the line (docs/security.md, rotation).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from walbroker.tokens import ROLES, TokenFileError, new_token, token_line


def add_token_args(p: argparse.ArgumentParser) -> None:
    """The `token` subcommands."""
    sub = p.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    new = sub.add_parser("new", help="make a token; print it once and its token-file line")
    new.add_argument("--principal", required=True, help="who uses the token (e.g. collector)")
    new.add_argument("--roles", required=True, help=f"comma-separated, of: {', '.join(ROLES)}")
    new.add_argument(
        "--scope",
        action="append",
        default=[],
        metavar="[ROLE:]topic=GLOB|[ROLE:]group=GLOB",
        help="restrict to topics or groups (repeatable; docs/security.md)",
    )
    new.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="write the token to FILE (mode 0600) instead of printing it",
    )


def run(a: argparse.Namespace) -> int:
    """Make the token; print the token-file line (and the token unless --out)."""
    token = new_token()
    try:
        line = token_line(a.principal, a.roles.split(","), token, a.scope)
    except TokenFileError as exc:
        print(f"walbroker token: {str(exc).removeprefix('<new>:1: ')}", file=sys.stderr)
        return 2
    if a.out is not None:
        fd = os.open(a.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.chmod(a.out, 0o600)
        print(f"# token written to {a.out} (mode 0600)", file=sys.stderr)
    else:
        print("# the token (shown once; give it to its client in a file of mode 0600):")
        print(token)
    print("# the line for the broker's or gateway's --auth-tokens file:")
    print(line)
    return 0

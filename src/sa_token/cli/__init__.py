"""The ``sa-token`` command line (``python -m sa_token`` runs the same): look at a projected
ServiceAccount token, watch it rotate, or run the demo.

    sa-token inspect [PATH] [--audience A] [--json]    decode and check a token file
    sa-token watch   [PATH] [--audience A] [--json]    one line per rotation / failed re-read
    sa-token check   [PATH] [--audience A] [--min-remaining D]  a probe: one line, an exit code
    sa-token demo    [--duration S] [--json]           kubelet + API server + client on this machine

Exit codes: 0 valid (or a clean stop), 1 invalid (expired, not yet valid, wrong audience;
`check`: also stale or expiring within ``--min-remaining``; the demo: a failed call), 2 file
error or malformed token (the demo: a missing dependency). Failures print a one-line reason on
stderr. Nothing ever prints the token or its signature.

One module per command (`inspect`, `watch`, `check`, `demo`), each with ``NAME``, ``HELP``,
``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> int`` (the `Command` protocol);
a new command is one more module and one more entry in `COMMANDS`. All output goes through
`sa_token.cli._output`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from typing import Optional

from sa_token._version import __version__
from sa_token.errors import MalformedTokenError, TokenError, TokenFileError

from . import check, demo, inspect, watch
from ._common import Command, library_logs
from ._output import EXIT_FILE, EXIT_INVALID, EXIT_OK, StderrLogHandler, fail

__all__ = ["COMMANDS", "main"]

COMMANDS: tuple[Command, ...] = (inspect, watch, check, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sa-token",
        description="Inspect and watch projected Kubernetes ServiceAccount tokens, or run a local demo.",
        epilog="Exit codes: 0 valid, 1 invalid or expired, 2 file error or malformed. "
        "The token itself is never printed.",
    )
    parser.add_argument("--version", action="version", version=f"sa-token {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        p = sub.add_parser(command.NAME, help=command.HELP, description=command.DESCRIPTION)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``sa-token`` command line; returns the exit code.

    The library's warnings (the ``sa_token`` logger) are shown on stderr while it runs, one
    escaped line each, unless the command shows them itself (`watch`, `demo`).
    """
    args = build_parser().parse_args(argv)
    with library_logs(StderrLogHandler()):
        try:
            code: int = args.run(args)
        except TokenError as exc:  # anything a command did not map: still one line, never a trace
            fail(str(exc))
            return EXIT_FILE if isinstance(exc, (TokenFileError, MalformedTokenError)) else EXIT_INVALID
        except BrokenPipeError:  # `sa-token watch | head`
            with contextlib.suppress(OSError):
                sys.stdout.close()
            return EXIT_OK
    return code

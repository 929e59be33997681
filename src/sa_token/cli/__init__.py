"""The ``sa-token`` command line (``python -m sa_token`` runs the same): look at a projected
ServiceAccount token, watch it rotate, or run the demo.

    sa-token inspect [PATH] [--audience A] [--json]    decode and check a token file
    sa-token watch   [PATH] [--audience A] [--json]    one line per rotation / failed re-read
    sa-token check   [PATH] [--audience A] [--min-remaining D]  a probe: one line, an exit code
    sa-token verify  [PATH|-] --audience A [--method M]  check a token as its receiver would
    sa-token demo    [--duration S] [--json]           kubelet + API server + client on this machine

Exit codes: 0 valid (or a clean stop), 1 invalid (expired, not yet valid, wrong audience;
`check`: also stale or expiring within ``--min-remaining``; the demo: a failed call), 2 file
error or malformed token (the demo: a missing dependency). Failures print a one-line reason on
stderr. Nothing ever prints the token or its signature.

One module per command (`inspect`, `watch`, `check`, `verify`, `demo`), each with ``NAME``, ``HELP``,
``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> int`` (the `Command` protocol);
a new command is one more module and one more name in `COMMANDS`. All output goes through
`sa_token.cli._output`.
"""

from __future__ import annotations

import os
import sys

from sa_token import _log
from sa_token.errors import MalformedTokenError, TokenError, TokenFileError

from ._output import EXIT_FILE, EXIT_INVALID, EXIT_OK, fail

TYPE_CHECKING = False  # not typing's: `sa-token check` runs as an exec probe every few seconds
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from types import TracebackType
    from typing import Any, Optional

    from ._common import Command

__all__ = ["COMMANDS", "build_parser", "main"]

# The commands, in the order the help lists them: each a module of this package.
COMMANDS = ("inspect", "watch", "check", "verify", "demo")


def _commands(argv: Optional[Sequence[str]]) -> list[Command]:
    """The command modules to load: the one named (a probe loads `check` alone, not the watch's
    or the demo's dependencies), or every one for the top-level help."""
    words = sys.argv[1:] if argv is None else argv
    named = next((w for w in words if not w.startswith("-")), None)
    names = (named,) if named in COMMANDS else COMMANDS
    return [_command(name) for name in names]


def _command(name: str) -> Command:
    """The module of command ``name`` (``__import__``: importlib's package costs a probe too)."""
    module: Command = __import__(f"{__name__}.{name}", fromlist=["run"])
    return module


def _formatter(prog: str, **options: Any) -> argparse.HelpFormatter:
    """argparse's formatter, told the terminal's width: left to find it, it imports ``shutil``
    (and with it bz2, lzma...), a tenth of an exec probe's start-up."""
    import argparse

    if options.get("width") is None:
        options["width"] = _columns() - 2
    return argparse.HelpFormatter(prog, **options)


def _columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size`` finds it: ``COLUMNS`` when it is a
    positive number, else the width of the terminal on stdout, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    stdout = sys.__stdout__
    try:
        return (os.get_terminal_size(stdout.fileno()).columns if stdout is not None else 0) or 80
    except (AttributeError, ValueError, OSError):  # stdout closed, or not a terminal
        return 80


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The parser of the commands ``argv`` names (all of them when it names none)."""
    import argparse  # not at import: `sa-token check` reads its plain arguments without it

    from sa_token._version import __version__

    parser = argparse.ArgumentParser(
        prog="sa-token",
        formatter_class=_formatter,
        description="Inspect and watch projected Kubernetes ServiceAccount tokens, or run a local demo.",
        epilog="Exit codes: 0 valid, 1 invalid or expired, 2 file error or malformed. "
        "The token itself is never printed.",
    )
    parser.add_argument("--version", action="version", version=f"sa-token {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in _commands(argv):
        p = sub.add_parser(
            command.NAME, help=command.HELP, description=command.DESCRIPTION, formatter_class=_formatter
        )
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``sa-token`` command line; returns the exit code.

    The library's warnings (the ``sa_token`` logger) are shown on stderr while it runs, one
    escaped line each, unless the command shows them itself (`watch`, `demo`).
    """
    words = sys.argv[1:] if argv is None else argv
    args = _probe_args(words) or build_parser(argv).parse_args(argv)
    with _StderrLogs():
        try:
            code: int = args.run(args)
        except TokenError as exc:  # anything a command did not map: still one line, never a trace
            fail(str(exc))
            return EXIT_FILE if isinstance(exc, (TokenFileError, MalformedTokenError)) else EXIT_INVALID
        except BrokenPipeError:  # `sa-token watch | head`
            try:
                sys.stdout.close()
            except OSError:
                pass
            return EXIT_OK
    return code


def _probe_args(words: Sequence[str]) -> Optional[Any]:
    """``sa-token check``'s plain arguments read without argparse: it runs as an exec probe."""
    if not words or words[0] != "check":
        return None
    from .check import probe_args

    return probe_args(words[1:])


class _StderrLogs:
    """The library's warnings on stderr while a command runs (`sa_token.cli._runtime`). Routed
    once the library makes its logger: a command that logs nothing never imports logging."""

    def __init__(self) -> None:
        self._route: Optional[Any] = None

    def __enter__(self) -> None:
        if _log._logger is not None:
            self._start()
        else:
            _log.ON_MADE.append(self._start)

    def _start(self) -> None:
        from ._runtime import StderrLogHandler, library_logs

        self._route = library_logs(StderrLogHandler())
        self._route.__enter__()

    def __exit__(self, kind: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        if self._start in _log.ON_MADE:
            _log.ON_MADE.remove(self._start)
        if self._route is not None:
            self._route.__exit__(kind, exc, tb)

"""``sa-token check [PATH] [--audience A] [--min-remaining 10m] [--json]``: an exec probe.

One line, and exit 0 when the token may be used for at least ``--min-remaining``, 1 when not
(expired, not yet valid, another audience, stale, too little time left), 2 when the file cannot
be read or is not a token. It reads the file once and applies `TokenSource`'s rule
(`sa_token._validity`), with no watch and no thread: cheap enough for a probe every few seconds.
It is stricter than `TokenSource` in one way: a stale token (the kubelet missed its rotation
point) is still served by a source, but fails the check, so that the probe shows it.
"""

from __future__ import annotations

from sa_token import _clock, _fmt, _read, _validity
from sa_token._paths import DEFAULT_TOKEN_PATH
from sa_token._token import Token
from sa_token.errors import TokenError

from ._common import add_path_argument, describe, token_path
from ._output import EXIT_FILE, EXIT_INVALID, EXIT_OK, Output, fail

TYPE_CHECKING = False  # not typing's: this module is on `sa-token check`'s path (an exec probe)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator, Sequence
    from types import SimpleNamespace
    from typing import Any, Optional, Union

__all__ = ["DESCRIPTION", "HELP", "NAME", "add_arguments", "evaluate", "parse_duration", "probe_args", "run"]

NAME = "check"
HELP = "one line and an exit code, for a readiness or liveness probe"
DESCRIPTION = (
    "Check a token file for an exec probe: exit 0 if the token is valid for at least "
    "--min-remaining, 1 if not (expired, not yet valid, wrong audience, stale, expiring), "
    "2 if the file cannot be read or is not a token. One line of output."
)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``10m``, ``1h30m``, ``1.5h``, ``2d`` or a number of seconds, as seconds."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        summed = _with_units(value)
        if summed is None:
            raise _refused(f"not a duration: {_fmt.text(text)!r} (use 90s, 10m, 1h30m or seconds)") from None
        seconds = summed
    if not 0 <= seconds < float("inf"):
        raise _refused(f"not a duration: {_fmt.text(text)!r} (must be >= 0)")
    return seconds


def _with_units(value: str) -> Optional[float]:
    """``(\\d+(\\.\\d+)?[smhd])+`` (ASCII digits) summed, or None: read by hand, since a regular
    expression compiled for a probe's ``10m`` would cost it more than the rest of its arguments."""
    total, number = 0.0, ""
    for ch in value:
        if "0" <= ch <= "9" or (ch == "." and number.isdigit()):
            number += ch
        elif ch in _UNITS and number[-1:].isdigit():
            total, number = total + float(number) * _UNITS[ch], ""
        else:
            return None
    return total if value and not number else None


def _refused(message: str) -> Exception:
    import argparse  # only when refusing: argparse then reports it (a probe never loads argparse)

    return argparse.ArgumentTypeError(message)


# The options `probe_args` reads itself, each with whether it takes a value.
_OPTIONS = {"--audience": True, "--min-remaining": True, "--json": False}


def probe_args(words: Sequence[str]) -> Optional[SimpleNamespace]:
    """The arguments after ``check`` as `build_parser` would parse them, read without argparse
    (with its gettext and locale lookups, about a fifth of an exec probe's CPU), or None for
    anything but the plain forms (``PATH``, ``--audience A``, ``--audience=A``,
    ``--min-remaining D``, ``--json``): help, abbreviations and every mistake go to argparse,
    which explains them. `tests/test_cli_check.py` holds the two to the same answers."""
    from types import SimpleNamespace

    path: Optional[str] = None
    audience: Optional[str] = None
    least, as_json = 0.0, False
    rest = iter(words)
    for word in rest:
        if not word.startswith("-"):
            if path is not None:
                return None
            path = word
            continue
        option = _option(word, rest)
        if option is None:
            return None
        name, value = option
        if name == "--audience":
            audience = value
        elif name == "--json":
            as_json = True
        else:
            try:
                least = parse_duration(value)  # each one, as argparse does
            except Exception:  # argparse's ArgumentTypeError: argparse says it
                return None
    return SimpleNamespace(
        path=DEFAULT_TOKEN_PATH if path is None else path,
        audience=audience,
        min_remaining=least,
        json=as_json,
        run=run,
    )


def _option(word: str, rest: Iterator[str]) -> Optional[tuple[str, str]]:
    """An option of `_OPTIONS` and its value (after ``=``, else the next word of ``rest``), or
    None for anything argparse must read."""
    name, eq, value = word.partition("=")
    takes = _OPTIONS.get(name)
    if takes is None or (eq and not takes):
        return None
    if takes and not eq:
        value = next(rest, "-")
        if value.startswith("-"):  # missing, or perhaps an option: argparse decides
            return None
    return name, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_path_argument(parser)
    parser.add_argument("--audience", help="fail (exit 1) unless the token carries this audience")
    parser.add_argument(
        "--min-remaining",
        type=parse_duration,
        default=0.0,
        metavar="DURATION",
        help="fail (exit 1) unless the token stays valid this long: 90s, 10m, 1h (default 0)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")


def run(args: Union[argparse.Namespace, SimpleNamespace]) -> int:
    out = Output()
    path: Optional[str] = None
    try:
        path = token_path(args.path)
        tok = _read.read_token_file(path)
    except TokenError as exc:
        line = f"{exc.reason}: {describe(exc, path)}"
        if args.json:
            out.json({"path": _fmt.path(args.path), "state": "file-error", "ok": False, "line": line})
        fail(line)
        return EXIT_FILE
    verdict = evaluate(tok, path, _clock.wall(), audience=args.audience, min_remaining=args.min_remaining)
    if args.json:
        out.json(verdict)
    if not verdict["ok"]:
        fail(verdict["line"])
        return EXIT_INVALID
    if not args.json:
        out.line(verdict["line"])
    return EXIT_OK


def evaluate(
    tok: Token, path: str, now: float, *, audience: Optional[str] = None, min_remaining: float = 0.0
) -> dict[str, Any]:
    """The check of a token read from ``path`` at ``now``: ``state`` (``"valid"``, an error's
    reason, ``"stale"`` or ``"expiring"``), ``ok``, the one ``line`` shown, and the times
    behind it. `sa-token inspect --json` includes it as ``"check"``."""
    shown = _fmt.path(path)
    expect = _validity.Expectations(audiences=None if audience is None else (audience,))
    problem = _validity.check(tok, now, expect, path)
    exp = tok.claims.get("exp")
    remaining = float("inf") if exp is None else float(exp) - now
    late = _validity.stale_for(tok, now)
    until = "never expires" if exp is None else f"expires in {_fmt.duration(remaining)} ({_fmt.iso(exp)})"
    if problem is not None:
        state, text = problem.reason, describe(problem, path)
    elif late is not None:
        state = "stale"
        text = (
            f"token at {shown} passed its rotation point {_fmt.duration(late + _validity.STALE_MARGIN)} "
            f"ago and the kubelet has not replaced it (see kubernetes issue 138689); it {until}"
        )
    elif remaining < min_remaining:
        state = "expiring"
        # To the second, never rounded up: 595 s left is "9m55s", not "10m" (less than "10m").
        text = (
            f"token at {shown} expires in {_fmt.exact_duration(remaining)} ({_fmt.iso(exp)}): less than "
            f"--min-remaining {_fmt.exact_duration(min_remaining)}"
        )
    else:
        state, text = "valid", f"token at {shown} {until}"
    return {
        "path": shown,
        "state": state,
        "ok": state == "valid",
        "line": f"{state}: {text}",
        "expires_at": _fmt.iso(None if exp is None else float(exp)),
        "remaining_seconds": None if exp is None else round(remaining, 3),
        "rotation_due_at": _fmt.iso(tok._rotation_ts),  # the float: no datetime on a probe
        "stale": late is not None,
        "min_remaining_seconds": min_remaining,
    }

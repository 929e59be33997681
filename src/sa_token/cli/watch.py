"""``sa-token watch [PATH] [--audience A] [--json]``: one line per rotation and per failed
re-read, until Ctrl-C or SIGTERM (exit 0), ``--max-rotations`` or ``--timeout``.

It follows the file with a `TokenSource`, as an application would; the library's warnings
become lines of the watch (``failed``, ``warning``).
"""

from __future__ import annotations

import argparse
import math
import queue
import time
from typing import Any, Optional

from sa_token import _clock, _fmt, _read, _validity
from sa_token._source import TokenSource
from sa_token._token import Token
from sa_token.errors import TokenError, TokenExpiredError, TokenValidationError

from ._common import add_path_argument, describe, mount_facts, short, token_path
from ._output import EXIT_FILE, EXIT_INVALID, EXIT_OK, Output, bad, fail, ok, warn
from ._runtime import QueueLogHandler, Stop, library_logs, stop_on_signals

__all__ = ["DESCRIPTION", "HELP", "NAME", "add_arguments", "run"]

NAME = "watch"
HELP = "print each rotation and failed re-read until interrupted"
DESCRIPTION = "Print one line per rotation and per failed re-read, until Ctrl-C or SIGTERM (exit 0)."

# The loop wakes this often to notice a stop request, a timeout or an expired token.
WATCH_TICK = 0.2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_path_argument(parser)
    parser.add_argument("--audience", help="the audience the token must carry")
    parser.add_argument("--json", action="store_true", help="JSON lines on stdout")
    parser.add_argument("--max-rotations", type=_positive_int, metavar="N", help="stop after N rotations")
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="S",
        help="stop after S seconds (exit 1 if --max-rotations not reached)",
    )


def run(args: argparse.Namespace) -> int:
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    path: Optional[str] = None
    with library_logs(QueueLogHandler(events)):
        try:
            path = token_path(args.path)
            src = TokenSource(path, audience=args.audience)
        except TokenError as exc:
            fail(describe(exc, path))
            return EXIT_INVALID if isinstance(exc, TokenValidationError) else EXIT_FILE
        with src, stop_on_signals():
            unsubscribe = src.subscribe(lambda tok: events.put(("rotation", tok)))
            try:
                return _loop(args, Output(), src, events)
            finally:
                unsubscribe()


def _loop(
    args: argparse.Namespace, out: Output, src: TokenSource, events: queue.Queue[tuple[str, Any]]
) -> int:
    watch = _Watch(args, out, src)
    try:
        reason = watch.run(events)
    except (KeyboardInterrupt, Stop):
        reason = "signal"
    return watch.stop(reason)


class _Watch:
    """One ``sa-token watch`` run: the current token, the rotations seen, what was reported."""

    def __init__(self, args: argparse.Namespace, out: Output, src: TokenSource) -> None:
        self.args, self.out, self.src = args, out, src
        start = _clock.wall()
        self.deadline = math.inf if args.timeout is None else _clock.mono() + args.timeout
        self.tok = _latest(src)
        _start(args, out, src, self.tok, start)
        iat = self.tok.claims.get("iat")
        self.last_at = float(iat) if iat is not None else start
        self.rotations = 0
        self.expired_reported: Optional[str] = None

    def run(self, events: queue.Queue[tuple[str, Any]]) -> str:
        """Report events until a limit is reached; returns why it stopped."""
        while True:
            if self.args.max_rotations is not None and self.rotations >= self.args.max_rotations:
                return "max-rotations"
            if _clock.mono() >= self.deadline:
                return "timeout"
            try:
                kind, payload = events.get(timeout=min(WATCH_TICK, max(0.0, self.deadline - _clock.mono())))
            except queue.Empty:
                self._idle()
                continue
            self._event(kind, payload)

    def _idle(self) -> None:
        """Nothing happened: report an expiry, once per token."""
        now = _clock.wall()
        problem = _validity.time_error(self.tok, now, _validity.DEFAULT_LEEWAY, self.src.path)
        key = str(self.tok.claims.get("jti", id(self.tok)))
        if isinstance(problem, TokenExpiredError) and self.expired_reported != key:
            self.expired_reported = key
            _event(self.args, self.out, "expired", now, message=str(problem))

    def _event(self, kind: str, payload: Any) -> None:
        now = _clock.wall()
        if kind != "rotation":
            _event(self.args, self.out, kind, now, message=payload)
            return
        self.tok = payload
        self.rotations += 1
        since = now - self.last_at
        _event(self.args, self.out, kind, now, token=self.tok, since_last=since, count=self.rotations)
        self.last_at = now

    def stop(self, reason: str) -> int:
        args, rotations = self.args, self.rotations
        if args.json:
            self.out.json(
                {"event": "stop", "at": _fmt.iso(_clock.wall()), "reason": reason, "rotations": rotations}
            )
        else:
            self.out.line(f"stopped ({reason}) after {rotations} rotation(s)")
        if reason == "timeout" and args.max_rotations is not None:
            fail(f"timed out after {args.timeout:g}s with {rotations} of {args.max_rotations} rotations")
            return EXIT_INVALID
        return EXIT_OK


def _mode(src: TokenSource) -> str:
    return src.status().watching


def _start(args: argparse.Namespace, out: Output, src: TokenSource, tok: Token, start: float) -> None:
    mount = mount_facts(src.path)
    if args.json:
        out.json(
            {
                "event": "start",
                "at": _fmt.iso(start),
                "path": _fmt.path(src.path),
                "mode": _mode(src),
                "mount": mount["kind"],
                "jti": tok.claims.get("jti"),
                "expires_at": _fmt.iso(tok.claims.get("exp")),
                "rotation_due_at": _fmt.iso(tok.rotation_due_at),
            }
        )
        return
    mode = "inotify" if _mode(src) == "inotify" else "timer: inotify unavailable"
    exp = tok.claims.get("exp")
    out.line(
        f"watching {_fmt.path(src.path)} ({mode}); token {short(tok)} expires {_fmt.iso(exp)} "
        f"({_fmt.relative(exp, start)}), rotation due {_fmt.relative(tok.rotation_due_at, start)}"
    )
    if mount["kind"] == "static":
        out.line(warn(f"warning: {mount['note']}"))


def _latest(src: TokenSource) -> Token:
    """The source's token, or (when it is expired or not yet valid, which ``current()`` refuses)
    the file's content, so that the watch can still show what it is waiting on."""
    try:
        return src.current()
    except TokenValidationError:
        return _read.read_token_file(src.path)


def _event(
    args: argparse.Namespace,
    out: Output,
    kind: str,
    now: float,
    *,
    token: Optional[Token] = None,
    since_last: Optional[float] = None,
    count: Optional[int] = None,
    message: Optional[str] = None,
) -> None:
    if args.json:
        obj: dict[str, Any] = {"event": kind, "at": _fmt.iso(now)}
        if token is not None:
            obj.update(
                {
                    "count": count,
                    "jti": token.claims.get("jti"),
                    "issued_at": _fmt.iso(token.claims.get("iat")),
                    "expires_at": _fmt.iso(token.claims.get("exp")),
                    "rotation_due_at": _fmt.iso(token.rotation_due_at),
                    "since_last_seconds": None if since_last is None else round(since_last, 3),
                }
            )
        if message is not None:
            obj["message"] = message
        out.json(obj)
        return
    stamp = time.strftime("%H:%M:%SZ", time.gmtime(now))
    if token is not None:
        exp = token.claims.get("exp")
        out.line(
            stamp,
            "  ",
            ok("rotated".ljust(9)),
            f"  expires {_fmt.iso(exp)} ({_fmt.relative(exp, now)})  "
            f"{_fmt.duration(since_last or 0.0)} since last  {short(token)}",
        )
    else:
        label = {"read_failed": bad("failed".ljust(9)), "expired": bad("expired".ljust(9))}.get(
            kind, warn("warning".ljust(9))
        )
        out.line(stamp, "  ", label, "  ", message or "")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value

"""``sa-token inspect [PATH] [--audience A] [--json]``: decode and check a token file.

Shows the claims, the times (UTC and relative), the mount (a projected volume that rotates, or
a static file that never will) and the file's mode and owner. Exit 0 when the token may be used,
1 when it must not (`sa_token._validity`: expired, not yet valid, another audience), 2 when the
file cannot be read or is not a token.
"""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from typing import Any, Callable, Optional

from sa_token import _clock, _fmt, _read, _validity
from sa_token._token import Token
from sa_token.errors import TokenError, TokenValidationError

from . import check
from ._common import add_path_argument, describe, file_facts, mount_facts, token_path
from ._output import EXIT_FILE, EXIT_INVALID, EXIT_OK, Output, Part, bad, dim, fail, ok, warn

__all__ = ["DESCRIPTION", "HELP", "NAME", "add_arguments", "run"]

NAME = "inspect"
HELP = "decode and check a token file"
DESCRIPTION = (
    "Decode and check a token file: claims, times, mount and file mode. "
    "Exit 0 if the token may be used, 1 if not, 2 if the file cannot be read or is not a token."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_path_argument(parser)
    parser.add_argument("--audience", help="fail (exit 1) unless the token carries this audience")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    out = Output()
    path: Optional[str] = None
    try:
        path = token_path(args.path)
        tok = _read.read_token_file(path)
    except TokenError as exc:
        return _file_error(args, out, describe(exc, path))
    try:
        facts = file_facts(path)
    except OSError as exc:  # the file vanished between the read and the stat
        return _file_error(args, out, f"cannot stat token file {_fmt.path(path)}: {exc.strerror}")
    now = _clock.wall()
    expect = _validity.Expectations(audiences=None if args.audience is None else (args.audience,))
    problem = _validity.check(tok, now, expect, path)
    report = _report(tok, path, now, problem, facts)
    report["check"] = check.evaluate(tok, path, now, audience=args.audience)  # what `check --json` says
    if args.json:
        out.json(report)
    else:
        _render(out, tok, report, now)
    if problem is not None:
        fail(report["reason"])
        return EXIT_INVALID
    return EXIT_OK


def _file_error(args: argparse.Namespace, out: Output, reason: str) -> int:
    if args.json:
        out.json({"path": _fmt.path(args.path), "valid": False, "status": "file-error", "reason": reason})
    fail(reason)
    return EXIT_FILE


def _claim(tok: Token, name: str) -> Optional[float]:
    """A time claim as a number (the parser checked its type): arithmetic on it cannot
    overflow, as datetimes and timedeltas of absurd claims (``exp=1e14``) do."""
    value = tok.claims.get(name)
    return None if value is None else float(value)


def _seconds(get: Callable[[], Optional[timedelta]]) -> Optional[float]:
    """A duration the token computes, or ``None`` when it has none or a garbage claim puts it
    beyond what a ``timedelta`` holds."""
    try:
        value = get()
    except (OverflowError, ValueError):
        return None
    return None if value is None else value.total_seconds()


def _report(
    tok: Token, path: str, now: float, problem: Optional[TokenValidationError], facts: dict[str, Any]
) -> dict[str, Any]:
    mount = mount_facts(path)
    exp = _claim(tok, "exp")
    return {
        "path": _fmt.path(path),
        "valid": problem is None,
        "status": "valid" if problem is None else problem.reason,
        "reason": None if problem is None else describe(problem, path),
        "header": dict(tok.header),
        "claims": dict(tok.claims),
        "issuer": tok.issuer,
        "subject": tok.subject,
        "audiences": list(tok.audiences),
        "namespace": tok.namespace,
        "service_account": tok.service_account,
        "pod": tok.pod,
        "node": tok.node,
        "issued_at": _fmt.iso(_claim(tok, "iat")),
        "not_before": _fmt.iso(_claim(tok, "nbf")),
        "expires_at": _fmt.iso(exp),
        "warn_after": _fmt.iso(tok.warn_after),
        "remaining_seconds": None if exp is None else round(exp - now, 3),
        "lifetime_seconds": _seconds(lambda: tok.lifetime),
        "rotation_due_at": _fmt.iso(tok.rotation_due_at),
        "file": facts,
        "mount": mount,
        "warnings": _warnings(tok, mount, now),
    }


def _warnings(tok: Token, mount: dict[str, Any], now: float) -> list[str]:
    out = []
    if mount["note"]:
        out.append(str(mount["note"]))
    late = _validity.stale_for(tok, now)
    if late is not None:
        out.append(
            f"passed its rotation point {_fmt.duration(late + _validity.STALE_MARGIN)} ago and was not "
            "rotated: the kubelet is not rotating this file (see kubernetes issue 138689)"
        )
    if tok.claims.get("exp") is None:
        out.append("no exp claim: a legacy Secret-based token that never expires")
    return out


def _render(out: Output, tok: Token, r: dict[str, Any], now: float) -> None:
    out.table(_rows(tok, r, now))
    for w in r["warnings"]:
        out.line(warn(f"warning: {w}"))
    if not r["valid"]:
        out.line(bad(f"reason: {r['reason']}"))
    out.line(dim("claims (decoded, signature not verified: a pod has no key; the API server checks it):"))
    out.lines(json.dumps(dict(tok.claims), indent=2, sort_keys=True, default=str))


def _rows(tok: Token, r: dict[str, Any], now: float) -> list[tuple[str, Part]]:
    def when(value: _fmt.Instant) -> str:
        return "-" if value is None else f"{_fmt.iso(value)}  ({_fmt.relative(value, now)})"

    f = r["file"]
    owner = f"owner {f['owner'] or '?'} ({f['uid']}), group {f['group'] or '?'} ({f['gid']})"
    due = tok.rotation_due_at
    rows: list[tuple[str, Part]] = [
        ("path", r["path"]),
        ("status", ok("valid") if r["valid"] else bad(f"INVALID: {r['status']}")),
        ("mount", _mount(r["mount"])),
        ("file", f"mode {f['mode']}, {owner}"),
        *_identity_rows(tok),
        ("issued", when(_claim(tok, "iat"))),
        ("not before", when(_claim(tok, "nbf"))),
        ("expires", when(_claim(tok, "exp"))),
    ]
    if tok.warn_after is not None:
        rows.append(("warn after", when(tok.warn_after) + "  (the real end of an extended token)"))
    rotation = "-" if due is None else (
        f"{_fmt.iso(due)}  ({_fmt.relative(due, now)}; the kubelet rotates at 80% of the lifetime)"
    )
    return [
        *rows,
        ("remaining", _left(r["remaining_seconds"], r["lifetime_seconds"])),
        ("rotation due", rotation),
        ("header", " ".join(f"{k}={v}" for k, v in sorted(tok.header.items()))),
    ]


def _mount(m: dict[str, Any]) -> Part:
    if m["kind"] == "projected":
        return f"projected volume {m['volume_root']} (..data -> {m['data_dir']}); rotates in place"
    return warn("static file: no ..data in any parent directory; will NEVER rotate (subPath mount?)")


def _identity_rows(tok: Token) -> list[tuple[str, Part]]:
    return [
        ("issuer", tok.issuer or "-"),
        ("subject", tok.subject or "-"),
        ("audiences", ", ".join(tok.audiences) or "-"),
        ("namespace", tok.namespace or "-"),
        ("service account", tok.service_account or "-"),
        ("pod", tok.pod or "-"),
        ("node", tok.node or "-"),
    ]


def _left(remaining: Optional[float], lifetime: Optional[float]) -> str:
    if remaining is None:
        return "never expires"
    rest = max(0.0, remaining)
    if lifetime is not None and lifetime > 0 and rest <= lifetime:  # (an extended token's exp is later)
        return f"{_fmt.duration(rest)} of {_fmt.duration(lifetime)} ({rest / lifetime * 100:.0f}%)"
    return _fmt.duration(remaining)

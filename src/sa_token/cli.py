"""``sa-token``: look at a projected ServiceAccount token, watch it rotate, or run the demo.

Commands (stdlib ``argparse``, no other dependency):

```text
sa-token inspect [PATH] [--audience A] [--json]    decode and check a token file
sa-token watch   [PATH] [--audience A] [--json]    one line per rotation / failed re-read
sa-token demo    [--duration S] [--json]           kubelet + API server + client on this machine
```

Exit codes: 0 valid (or a clean stop), 1 invalid (expired, not yet valid, wrong audience; the demo:
a failed call), 2 file error or malformed token (the demo: a missing dependency). Failures print a
one-line reason on stderr. Nothing ever prints the token or its signature.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import queue
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Optional, TextIO

from ._read import read_token_file
from ._source import DEFAULT_LEEWAY, DEFAULT_TOKEN_PATH, STALE_MARGIN, TokenSource
from ._token import Token
from ._version import __version__
from ._watch import DATA_DIR, volume_root
from .errors import MalformedTokenError, TokenError, TokenFileError, TokenValidationError

__all__ = ["main"]

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_FILE = 2
DEMO_INSTALL_HINT = "pip install 'sa-token[demo]'"

# The demo's default length: the simulated kubelet rotates every DEMO_ROTATE_EVERY seconds, so 20 s
# shows five rotations and outlives the first token (DEMO_TOKEN_SECONDS) twice over: long enough
# to prove a token read once would now be rejected, short enough to watch to the end.
DEMO_DURATION = 20.0
# Rotate every 4 s: several rotations in a short demo, yet far apart enough to read the output.
DEMO_ROTATE_EVERY = 4.0
# Tokens live 8 s (the kubelet's 10 min minimum, scaled down): the kubelet's rotation at 4 s is
# at 50% of the lifetime, before the 80% point, and a client that kept an old token fails within
# two rotations. JWT times are whole seconds, so anything much shorter would be flaky.
DEMO_TOKEN_SECONDS = 8
# One call every 0.5 s: a steady stream of requests straddling each rotation.
DEMO_CALL_EVERY = 0.5
DEMO_AUDIENCE = "sa-token-demo"
# How long the demo waits for a call to the local server before counting it as failed.
DEMO_CALL_TIMEOUT = 5.0
# The watch loop wakes this often to notice a stop request, a timeout or an expired token.
WATCH_TICK = 0.2


# ----------------------------------------------------------------------- formatting -------
def _iso(dt: Optional[datetime]) -> Optional[str]:
    return None if dt is None else dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _human(seconds: float) -> str:
    """A short duration: ``45s``, ``41m``, ``1h59m``, ``3d4h``."""
    if not math.isfinite(seconds):
        return "forever"
    s = abs(seconds)
    if s < 90:
        return f"{s:.0f}s" if s >= 10 else f"{s:.1f}s".replace(".0s", "s")
    if s < 90 * 60:
        return f"{s / 60:.0f}m"
    if s < 48 * 3600:
        h, m = divmod(int(s // 60), 60)
        return f"{h}h{m:02d}m"
    d, h = divmod(int(s // 3600), 24)
    return f"{d}d{h}h"


def _relative(when: Optional[datetime], now: float) -> str:
    if when is None:
        return "never"
    delta = when.timestamp() - now
    return f"in {_human(delta)}" if delta >= 0 else f"{_human(delta)} ago"


class _Style:
    """ANSI colour only for a terminal, and never when ``NO_COLOR`` is set (no-color.org)."""

    def __init__(self, stream: TextIO) -> None:
        isatty = getattr(stream, "isatty", None)
        self.on = bool(
            isatty is not None
            and isatty()
            and "NO_COLOR" not in os.environ
            and os.environ.get("TERM") != "dumb"
        )

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.on else text

    def ok(self, text: str) -> str:
        return self._wrap("32", text)

    def bad(self, text: str) -> str:
        return self._wrap("31;1", text)

    def warn(self, text: str) -> str:
        return self._wrap("33", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)


def _table(rows: Sequence[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _fail(message: str) -> None:
    print(f"sa-token: {message}", file=sys.stderr)


def _json_line(obj: Mapping[str, Any]) -> None:
    print(json.dumps(obj, sort_keys=False, default=str), flush=True)


# ----------------------------------------------------------------------- file facts -------
def _mount_facts(path: str) -> dict[str, Any]:
    root = volume_root(path)
    if root is None:
        return {
            "kind": "static",
            "volume_root": None,
            "data_dir": None,
            "note": "no ..data in any parent directory: a static file (a subPath mount or a copy) "
            "that the kubelet will never rotate; mount the projected volume's directory instead",
        }
    data = os.path.join(root, DATA_DIR)
    try:
        target: Optional[str] = os.readlink(data)
    except OSError:
        target = None
    facts: dict[str, Any] = {"kind": "projected", "volume_root": root, "data_dir": target, "note": None}
    real = os.path.realpath(path)
    current = os.path.realpath(data)
    if not (real == current or real.startswith(current + os.sep)):
        facts["note"] = (
            f"the path resolves to {real}, outside the current ..data generation: it will go stale; "
            "use the path through the volume's top-level link"
        )
    return facts


def _file_facts(path: str) -> dict[str, Any]:
    st = os.stat(path)
    facts: dict[str, Any] = {
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "uid": st.st_uid,
        "gid": st.st_gid,
        "owner": _user_name(st.st_uid),
        "group": _group_name(st.st_gid),
        "symlink": os.path.islink(path),
        "resolves_to": os.path.realpath(path),
    }
    return facts


def _user_name(uid: int) -> Optional[str]:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return None


def _group_name(gid: int) -> Optional[str]:
    try:
        import grp

        return grp.getgrgid(gid).gr_name
    except (ImportError, KeyError):
        return None


# ----------------------------------------------------------------------- checks -----------
def _problems(tok: Token, audience: Optional[str], now: float) -> tuple[Optional[str], Optional[str]]:
    """(status, reason) when the token must not be used, else (None, None)."""
    exp = tok.claims.get("exp")
    if exp is not None and now >= exp:
        rp = tok.rotation_due_at
        stale = (
            f"; the kubelet should have rotated it at {_iso(rp)} (80% of its lifetime): it is not rotating "
            "this file (a subPath mount, or a kubelet stuck as in kubernetes issue 138689)"
            if rp is not None
            else ""
        )
        return "expired", f"token expired at {_iso(tok.expires_at)}, {_human(now - exp)} ago{stale}"
    for claim in ("nbf", "iat"):
        t = tok.claims.get(claim)
        if t is not None and t - DEFAULT_LEEWAY > now:
            return "not-yet-valid", (
                f"token is not valid until {_iso(datetime.fromtimestamp(t, tz=timezone.utc))} ({claim} is "
                f"{_human(t - now)} in the future, beyond the {DEFAULT_LEEWAY:.0f}s leeway); "
                "check this node's clock"
            )
    if audience is not None and audience not in tok.audiences:
        return "audience-mismatch", (
            f"token is for audience {list(tok.audiences)!r}, not {audience!r}; set "
            "serviceAccountToken.audience in the pod's projected volume"
        )
    return None, None


def _warnings(tok: Token, mount: Mapping[str, Any], now: float) -> list[str]:
    out = []
    if mount.get("note"):
        out.append(str(mount["note"]))
    rp = tok.rotation_due_at
    exp = tok.claims.get("exp")
    if rp is not None and exp is not None and rp.timestamp() + STALE_MARGIN < now < exp:
        out.append(
            f"passed its rotation point {_human(now - rp.timestamp())} ago and was not rotated: the kubelet "
            "is not rotating this file (see kubernetes issue 138689)"
        )
    if exp is None:
        out.append("no exp claim: a legacy Secret-based token that never expires")
    return out


# ----------------------------------------------------------------------- inspect ----------
def cmd_inspect(args: argparse.Namespace) -> int:
    path = os.path.abspath(args.path)
    now = time.time()
    try:
        tok = read_token_file(path)
    except (TokenFileError, MalformedTokenError) as exc:
        if args.json:
            _json_line({"path": path, "valid": False, "status": "file-error", "reason": str(exc)})
        _fail(str(exc))
        return EXIT_FILE
    try:
        file_facts: dict[str, Any] = _file_facts(path)
    except OSError as exc:  # the file vanished between the read and the stat
        _fail(f"cannot stat token file {path}: {exc.strerror}")
        return EXIT_FILE
    mount = _mount_facts(path)
    status, reason = _problems(tok, args.audience, now)
    warnings = _warnings(tok, mount, now)
    remaining = tok.remaining(now)
    lifetime = tok.lifetime
    report: dict[str, Any] = {
        "path": path,
        "valid": status is None,
        "status": status or "valid",
        "reason": reason,
        "header": dict(tok.header),
        "claims": dict(tok.claims),
        "issuer": tok.issuer,
        "subject": tok.subject,
        "audiences": list(tok.audiences),
        "namespace": tok.namespace,
        "service_account": tok.service_account,
        "pod": tok.pod,
        "node": tok.node,
        "issued_at": _iso(tok.issued_at),
        "not_before": _iso(tok.not_before),
        "expires_at": _iso(tok.expires_at),
        "warn_after": _iso(tok.warn_after),
        "remaining_seconds": None if remaining is None else round(remaining.total_seconds(), 3),
        "lifetime_seconds": None if lifetime is None else lifetime.total_seconds(),
        "rotation_due_at": _iso(tok.rotation_due_at),
        "file": file_facts,
        "mount": mount,
        "warnings": warnings,
    }
    if args.json:
        _json_line(report)
    else:
        print(_render_inspect(tok, report, now, _Style(sys.stdout)))
    if status is not None:
        _fail(f"{path}: {reason}")
        return EXIT_INVALID
    return EXIT_OK


def _render_inspect(tok: Token, r: Mapping[str, Any], now: float, st: _Style) -> str:
    def when(dt: Optional[datetime]) -> str:
        return "-" if dt is None else f"{_iso(dt)}  ({_relative(dt, now)})"

    status = st.ok("valid") if r["valid"] else st.bad(f"INVALID: {r['status']}")
    f = r["file"]
    owner = f"{f['owner'] or '?'} ({f['uid']})"
    group = f"{f['group'] or '?'} ({f['gid']})"
    m = r["mount"]
    if m["kind"] == "projected":
        mount = f"projected volume {m['volume_root']} (..data -> {m['data_dir']}); rotates in place"
    else:
        mount = st.warn("static file: no ..data in any parent directory; will NEVER rotate (subPath mount?)")
    remaining, lifetime = tok.remaining(now), tok.lifetime
    if remaining is None:
        left = "never expires"
    elif lifetime is not None and lifetime.total_seconds() > 0:
        rest, total = max(0.0, remaining.total_seconds()), lifetime.total_seconds()
        left = f"{_human(rest)} of {_human(total)} ({rest / total * 100:.0f}%)"
    else:
        left = _human(remaining.total_seconds())
    rows = [
        ("path", r["path"]),
        ("status", status),
        ("mount", mount),
        ("file", f"mode {f['mode']}, owner {owner}, group {group}"),
        ("issuer", r["issuer"] or "-"),
        ("subject", r["subject"] or "-"),
        ("audiences", ", ".join(r["audiences"]) or "-"),
        ("namespace", r["namespace"] or "-"),
        ("service account", r["service_account"] or "-"),
        ("pod", r["pod"] or "-"),
        ("node", r["node"] or "-"),
        ("issued", when(tok.issued_at)),
        ("not before", when(tok.not_before)),
        ("expires", when(tok.expires_at)),
    ]
    if tok.warn_after is not None:
        rows.append(("warn after", when(tok.warn_after) + "  (the real end of an extended token)"))
    rows += [
        ("remaining", left),
        (
            "rotation due",
            "-"
            if tok.rotation_due_at is None
            else f"{_iso(tok.rotation_due_at)}  ({_relative(tok.rotation_due_at, now)}; the kubelet rotates "
            "at 80% of the lifetime)",
        ),
        ("header", " ".join(f"{k}={v}" for k, v in sorted(tok.header.items()))),
    ]
    lines = [_table(rows)]
    for w in r["warnings"]:
        lines.append(st.warn(f"warning: {w}"))
    if not r["valid"]:
        lines.append(st.bad(f"reason: {r['reason']}"))
    lines.append(
        st.dim("claims (decoded, signature not verified: a pod has no key; the API server checks it):")
    )
    lines.append(json.dumps(dict(tok.claims), indent=2, sort_keys=True, default=str))
    return "\n".join(lines)


# ----------------------------------------------------------------------- watch ------------
class _Stop(Exception):
    """Raised in the main thread by the SIGTERM handler."""


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM raises `_Stop` (SIGINT already raises KeyboardInterrupt); restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Optional[FrameType]) -> None:
        raise _Stop(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _QueueHandler(logging.Handler):
    """Turns the library's warnings (failed re-reads, a kubelet not rotating) into watch events."""

    def __init__(self, events: queue.Queue[tuple[str, Any]]) -> None:
        super().__init__(logging.WARNING)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # a broken record must not kill the watcher thread
            return
        if msg.startswith("sa-token: "):
            msg = msg[len("sa-token: ") :]
        kind = "read_failed" if msg.startswith("re-read failed") else "warning"
        self.events.put((kind, msg))


def cmd_watch(args: argparse.Namespace) -> int:
    path = os.path.abspath(args.path)
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    handler = _QueueHandler(events)
    logger = logging.getLogger("sa_token")
    logger.addHandler(handler)
    st = _Style(sys.stdout)
    try:
        try:
            src = TokenSource(path, audience=args.audience)
        except (TokenFileError, MalformedTokenError) as exc:
            _fail(str(exc))
            return EXIT_FILE
        except TokenValidationError as exc:
            _fail(str(exc))
            return EXIT_INVALID
        with src, _stop_on_signals():
            unsubscribe = src.subscribe(lambda tok: events.put(("rotation", tok)))
            try:
                return _watch_loop(args, src, events, st)
            finally:
                unsubscribe()
    finally:
        logger.removeHandler(handler)


def _watch_loop(
    args: argparse.Namespace, src: TokenSource, events: queue.Queue[tuple[str, Any]], st: _Style
) -> int:
    start = time.time()
    deadline = math.inf if args.timeout is None else time.monotonic() + args.timeout
    tok = _latest(src)
    _watch_start(args, st, src, tok, start)
    last_at = tok.issued_at.timestamp() if tok.issued_at is not None else start
    rotations = 0
    expired_reported: Optional[str] = None
    stop_reason = "signal"
    try:
        while True:
            if args.max_rotations is not None and rotations >= args.max_rotations:
                stop_reason = "max-rotations"
                break
            if time.monotonic() >= deadline:
                stop_reason = "timeout"
                break
            try:
                kind, payload = events.get(timeout=min(WATCH_TICK, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                now = time.time()
                status, reason = _problems(tok, None, now)
                key = str(tok.claims.get("jti", id(tok)))
                if status == "expired" and expired_reported != key:  # once per token
                    expired_reported = key
                    _watch_event(args, st, "expired", now, message=reason)
                continue
            now = time.time()
            if kind == "rotation":
                tok = payload
                rotations += 1
                _watch_event(args, st, kind, now, token=tok, since_last=now - last_at, count=rotations)
                last_at = now
            else:
                _watch_event(args, st, kind, now, message=payload)
    except (KeyboardInterrupt, _Stop):
        stop_reason = "signal"
    if args.json:
        _json_line(
            {"event": "stop", "at": _iso(_utc(time.time())), "reason": stop_reason, "rotations": rotations}
        )
    else:
        print(f"stopped ({stop_reason}) after {rotations} rotation(s)", flush=True)
    if stop_reason == "timeout" and args.max_rotations is not None:
        _fail(f"timed out after {args.timeout:g}s with {rotations} of {args.max_rotations} rotations")
        return EXIT_INVALID
    return EXIT_OK


def _watch_start(args: argparse.Namespace, st: _Style, src: TokenSource, tok: Token, start: float) -> None:
    mount = _mount_facts(src.path)
    if args.json:
        _json_line(
            {
                "event": "start",
                "at": _iso(_utc(start)),
                "path": src.path,
                "mode": "inotify" if src.watching else "timer",
                "mount": mount["kind"],
                "jti": tok.claims.get("jti"),
                "expires_at": _iso(tok.expires_at),
                "rotation_due_at": _iso(tok.rotation_due_at),
            }
        )
        return
    mode = "inotify" if src.watching else "timer: inotify unavailable"
    print(
        f"watching {src.path} ({mode}); token {_short(tok)} expires {_iso(tok.expires_at)} "
        f"({_relative(tok.expires_at, start)}), rotation due {_relative(tok.rotation_due_at, start)}",
        flush=True,
    )
    if mount["kind"] == "static":
        print(st.warn(f"warning: {mount['note']}"), flush=True)


def _latest(src: TokenSource) -> Token:
    """The source's token, or (when it is expired or not yet valid, which ``current()`` refuses)
    the file's content, so that the watch can still show what it is waiting on."""
    try:
        return src.current()
    except TokenValidationError:
        return read_token_file(src.path)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def _short(tok: Token) -> str:
    jti = tok.claims.get("jti")
    return f"jti {str(jti)[:8]}" if jti else "(no jti)"


def _watch_event(
    args: argparse.Namespace,
    st: _Style,
    kind: str,
    now: float,
    *,
    token: Optional[Token] = None,
    since_last: Optional[float] = None,
    count: Optional[int] = None,
    message: Optional[str] = None,
) -> None:
    at = _utc(now)
    if args.json:
        obj: dict[str, Any] = {"event": kind, "at": _iso(at)}
        if token is not None:
            obj.update(
                {
                    "count": count,
                    "jti": token.claims.get("jti"),
                    "issued_at": _iso(token.issued_at),
                    "expires_at": _iso(token.expires_at),
                    "rotation_due_at": _iso(token.rotation_due_at),
                    "since_last_seconds": None if since_last is None else round(since_last, 3),
                }
            )
        if message is not None:
            obj["message"] = message
        _json_line(obj)
        return
    stamp = at.strftime("%H:%M:%SZ")
    if token is not None:
        exp = token.expires_at
        line = (
            f"{stamp}  {st.ok('rotated'.ljust(9))}  expires {_iso(exp)} ({_relative(exp, now)})  "
            f"{_human(since_last or 0.0)} since last  {_short(token)}"
        )
    elif kind == "read_failed":
        line = f"{stamp}  {st.bad('failed'.ljust(9))}  {message}"
    elif kind == "expired":
        line = f"{stamp}  {st.bad('expired'.ljust(9))}  {message}"
    else:
        line = f"{stamp}  {st.warn('warning'.ljust(9))}  {message}"
    print(line, flush=True)


# ----------------------------------------------------------------------- demo -------------
_DEMO_DEPENDENCIES = {"cryptography", "trustme", "requests", "urllib3", "jwt"}


def _demo_imports() -> Optional[dict[str, Any]]:
    """The demo's parts, or None after printing the install hint when a dependency is missing."""
    try:  # lazily: inspect and watch need none of these
        import requests

        from .requests import TokenAuth
        from .testing import Kubelet, ProjectedVolume, TokenIssuer
        from .testing.apiserver import FakeAPIServer
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top in _DEMO_DEPENDENCIES:
            _fail(f"the demo needs {top!r}, which is not installed: {DEMO_INSTALL_HINT}")
        else:
            _fail(f"the demo cannot import {exc.name!r} ({exc}): reinstall sa-token ({DEMO_INSTALL_HINT})")
        return None
    return {
        "requests": requests,
        "TokenAuth": TokenAuth,
        "Kubelet": Kubelet,
        "ProjectedVolume": ProjectedVolume,
        "TokenIssuer": TokenIssuer,
        "FakeAPIServer": FakeAPIServer,
    }


class _Demo:
    """The demo's state and its output (one writer: the main thread)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.st = _Style(sys.stdout)
        self.start = time.monotonic()
        self.calls = 0
        self.failures = 0
        self.reloads = 0
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def emit(self, event: str, text: str, **fields: Any) -> None:
        if self.args.json:
            _json_line({"event": event, "t": round(self.elapsed(), 3), **fields})
        else:
            print(f"{self.elapsed():6.1f}s  {text}", flush=True)

    def drain(self) -> None:
        while True:
            try:
                kind, payload = self.events.get_nowait()
            except queue.Empty:
                return
            if kind == "rotation":
                tok: Token = payload
                self.reloads += 1
                self.emit(
                    "rotation",
                    f"{self.st.ok('rotation')}  the client picked up a new token: {_short(tok)}, "
                    f"expires {_iso(tok.expires_at)} ({_relative(tok.expires_at, time.time())})",
                    jti=tok.claims.get("jti"),
                    expires_at=_iso(tok.expires_at),
                )
            else:
                self.emit("warning", f"{self.st.warn('warning')}   {payload}", message=payload)


def cmd_demo(args: argparse.Namespace) -> int:
    parts = _demo_imports()
    if parts is None:
        return EXIT_FILE
    if not (args.duration > 0 and math.isfinite(args.duration)):
        _fail(f"--duration must be a positive number of seconds, got {args.duration}")
        return EXIT_FILE
    demo = _Demo(args)
    handler = _QueueHandler(demo.events)
    logger = logging.getLogger("sa_token")
    logger.addHandler(handler)
    try:
        with tempfile.TemporaryDirectory(prefix="sa-token-demo-") as tmp, _stop_on_signals():
            return _run_demo(args, demo, parts, Path(tmp))
    finally:
        logger.removeHandler(handler)


def _run_demo(args: argparse.Namespace, demo: _Demo, parts: Mapping[str, Any], tmp: Path) -> int:
    requests = parts["requests"]
    try:
        issuer = parts["TokenIssuer"]()  # needs cryptography
        server = parts["FakeAPIServer"](issuer, audiences=[DEMO_AUDIENCE], tls=True)  # needs trustme
    except ImportError as exc:
        _fail(f"the demo needs a package that is not installed ({exc}): {DEMO_INSTALL_HINT}")
        return EXIT_FILE
    with contextlib.ExitStack() as stack:
        stack.enter_context(server)
        volume = parts["ProjectedVolume"](tmp / "serviceaccount")
        kubelet = parts["Kubelet"](
            volume,
            issuer,
            audiences=[DEMO_AUDIENCE],
            expiration_seconds=DEMO_TOKEN_SECONDS,
            ca_pem=server.ca_pem,
        )
        first_token = kubelet.rotate()
        stack.callback(kubelet.stop)
        source = stack.enter_context(TokenSource(volume.token_path, audience=DEMO_AUDIENCE))
        source.subscribe(lambda tok: demo.events.put(("rotation", tok)))
        session = stack.enter_context(requests.Session())
        session.auth = parts["TokenAuth"](source)
        # The CA the kubelet wrote into the volume. Passed per request: requests lets the
        # REQUESTS_CA_BUNDLE environment variable override session.verify (psf/requests#3829).
        ca_file = str(volume.path("ca.crt"))
        url = f"{server.url.rstrip('/')}/api/v1/namespaces/default/pods"
        demo.emit(
            "start",
            f"kubelet: projected volume {volume.directory}, a new {DEMO_TOKEN_SECONDS}s token every "
            f"{DEMO_ROTATE_EVERY:g}s\n{'':9}API server: {server.url} (verifies RS256, aud, exp)"
            f"\n{'':9}client: requests + sa_token.requests.TokenAuth, one call every {DEMO_CALL_EVERY:g}s "
            f"for {args.duration:g}s",
            volume=str(volume.directory),
            server=server.url,
            duration=args.duration,
        )
        kubelet.start(every=DEMO_ROTATE_EVERY)
        interrupted = False
        try:
            while demo.elapsed() < args.duration:
                demo.drain()
                _demo_call(demo, session, url, ca_file, server)
                demo.drain()
                time.sleep(max(0.0, min(DEMO_CALL_EVERY, args.duration - demo.elapsed())))
        except (KeyboardInterrupt, _Stop):
            interrupted = True
        kubelet.stop()
        time.sleep(0.05)  # let a rotation that raced the stop reach the subscriber
        demo.drain()
        stale = _stale_check(requests, url, first_token, ca_file)
        rotations = max(0, kubelet.rotations - 1)  # the first write is not a rotation
        summary = {
            "calls": demo.calls,
            "rotations": rotations,
            "reloads": demo.reloads,
            "failures": demo.failures,
            "stale_token_status": stale,
            "interrupted": interrupted,
        }
    ok = demo.failures == 0 and demo.calls > 0
    if args.json:
        _json_line({"event": "summary", "t": round(demo.elapsed(), 3), **summary, "ok": ok})
    else:
        verdict = demo.st.ok("OK") if ok else demo.st.bad("FAILED")
        print(
            _table(
                [
                    ("calls", str(demo.calls)),
                    ("rotations", f"{rotations} (the client reloaded {demo.reloads} times)"),
                    ("failures", str(demo.failures)),
                    (
                        "first token",
                        f"rejected now with HTTP {stale}: a client that read the file once would be failing"
                        if stale is not None and stale != 200
                        else "still valid (the demo ran shorter than one token lifetime)",
                    ),
                    ("result", verdict),
                ]
            ),
            flush=True,
        )
    if not ok:
        _fail(f"demo failed: {demo.failures} of {demo.calls} calls failed")
        return EXIT_INVALID
    return EXIT_OK


def _demo_call(demo: _Demo, session: Any, url: str, ca_file: str, server: Any) -> None:
    demo.calls += 1
    n = demo.calls
    try:
        resp = session.get(url, verify=ca_file, timeout=DEMO_CALL_TIMEOUT)
    except Exception as exc:  # any transport error is a failed call
        demo.failures += 1
        demo.emit(
            "call",
            f"call {n:3d}  {demo.st.bad('ERROR')} {type(exc).__name__}",
            n=n,
            status=None,
            error=type(exc).__name__,
        )
        return
    status = resp.status_code
    if status != 200:
        demo.failures += 1
        label = demo.st.bad(f"{status} {resp.reason}")
    else:
        label = demo.st.ok(f"{status} {resp.reason}")
    seen = server.requests
    jti = seen[-1].token_jti if seen else None  # what the server saw: the token's jti, never the token
    demo.emit("call", f"call {n:3d}  {label}  token jti {str(jti)[:8]}", n=n, status=status, jti=jti)


def _stale_check(requests: Any, url: str, token: str, ca_file: str) -> Optional[int]:
    """Send the first token (read once at the start) again: the server rejects it once expired."""
    try:
        resp = requests.get(
            url, headers={"Authorization": f"Bearer {token}"}, verify=ca_file, timeout=DEMO_CALL_TIMEOUT
        )
    except Exception:  # the server is gone: no verdict
        return None
    return int(resp.status_code)


# ----------------------------------------------------------------------- main -------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sa-token",
        description="Inspect and watch projected Kubernetes ServiceAccount tokens, or run a local demo.",
        epilog="Exit codes: 0 valid, 1 invalid or expired, 2 file error or malformed. "
        "The token itself is never printed.",
    )
    p.add_argument("--version", action="version", version=f"sa-token {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    path_help = f"the token file (default {DEFAULT_TOKEN_PATH})"
    i = sub.add_parser(
        "inspect", help="decode and check a token file", description="Decode and check a token file."
    )
    i.add_argument("path", nargs="?", default=DEFAULT_TOKEN_PATH, metavar="PATH", help=path_help)
    i.add_argument("--audience", help="fail (exit 1) unless the token carries this audience")
    i.add_argument("--json", action="store_true", help="one JSON object on stdout")
    i.set_defaults(func=cmd_inspect)

    w = sub.add_parser(
        "watch",
        help="print each rotation and failed re-read until interrupted",
        description="Print one line per rotation and per failed re-read, until Ctrl-C or SIGTERM (exit 0).",
    )
    w.add_argument("path", nargs="?", default=DEFAULT_TOKEN_PATH, metavar="PATH", help=path_help)
    w.add_argument("--audience", help="the audience the token must carry")
    w.add_argument("--json", action="store_true", help="JSON lines on stdout")
    w.add_argument("--max-rotations", type=_positive_int, metavar="N", help="stop after N rotations")
    w.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="S",
        help="stop after S seconds (exit 1 if --max-rotations not reached)",
    )
    w.set_defaults(func=cmd_watch)

    d = sub.add_parser(
        "demo",
        help="a kubelet, an API server and a client on this machine",
        description="A simulated kubelet rotates short-lived tokens in a temporary projected volume; a "
        "client using sa_token.requests.TokenAuth keeps calling a local HTTPS server that verifies them. "
        f"Needs {DEMO_INSTALL_HINT}.",
    )
    d.add_argument(
        "--duration",
        type=float,
        default=DEMO_DURATION,
        metavar="S",
        help=f"seconds (default {DEMO_DURATION:g})",
    )
    d.add_argument("--json", action="store_true", help="JSON lines on stdout, then a summary line")
    d.set_defaults(func=cmd_demo)
    return p


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``sa-token`` command line; returns the exit code."""
    args = _parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except TokenError as exc:  # anything the commands did not map: still one line, never a trace
        _fail(str(exc))
        return EXIT_FILE if isinstance(exc, (TokenFileError, MalformedTokenError)) else EXIT_INVALID
    except BrokenPipeError:  # `sa-token watch | head`
        with contextlib.suppress(OSError):
            sys.stdout.close()
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

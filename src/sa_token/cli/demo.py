"""``sa-token demo [--duration S] [--json]``: a kubelet, an API server and a client, all on
this machine.

A simulated kubelet (`sa_token.testing.Kubelet`) rotates short-lived tokens in a temporary
projected volume; a `requests` client with `sa_token.requests.TokenAuth` keeps calling a local
HTTPS server (`sa_token.testing.apiserver.FakeAPIServer`) that verifies each token. Exit 0 when
no call failed, 1 otherwise, 2 when a dependency is missing (``pip install 'sa-token[demo]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import queue
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from sa_token import _clock, _fmt
from sa_token._source import TokenSource
from sa_token._token import Token, parse_token

from ._common import short
from ._output import EXIT_FILE, EXIT_INVALID, EXIT_OK, Output, Part, bad, fail, ok, warn
from ._runtime import QueueLogHandler, Stop, library_logs, stop_on_signals

__all__ = ["DESCRIPTION", "HELP", "NAME", "add_arguments", "run"]

INSTALL_HINT = "pip install 'sa-token[demo]'"
NAME = "demo"
HELP = "a kubelet, an API server and a client on this machine"
DESCRIPTION = (
    "A simulated kubelet rotates short-lived tokens in a temporary projected volume; a client using "
    "sa_token.requests.TokenAuth keeps calling a local HTTPS server that verifies them. "
    f"Needs {INSTALL_HINT}."
)

# The demo's default length: the simulated kubelet rotates every ROTATE_EVERY seconds, so 20 s
# shows five rotations and outlives the first token (TOKEN_SECONDS) twice over: long enough to
# prove a token read once would now be rejected, short enough to watch to the end.
DURATION = 20.0
# Rotate every 4 s: several rotations in a short demo, yet far apart enough to read the output.
ROTATE_EVERY = 4.0
# Tokens live 8 s (the kubelet's 10 min minimum, scaled down): the kubelet's rotation at 4 s is
# at 50% of the lifetime, before the 80% point, and a client that kept an old token fails within
# two rotations. JWT times are whole seconds, so anything much shorter would be flaky.
TOKEN_SECONDS = 8
# One call every 0.5 s: a steady stream of requests straddling each rotation.
CALL_EVERY = 0.5
AUDIENCE = "sa-token-demo"
# How long the demo waits for a call to the local server before counting it as failed.
CALL_TIMEOUT = 5.0
# The top-level packages the demo needs beyond the library itself (the `demo` extra).
_DEPENDENCIES = {"cryptography", "trustme", "requests", "urllib3", "jwt"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration", type=float, default=DURATION, metavar="S", help=f"seconds (default {DURATION:g})"
    )
    parser.add_argument("--json", action="store_true", help="JSON lines on stdout, then a summary line")


def run(args: argparse.Namespace) -> int:
    parts = _imports()
    if parts is None:
        return EXIT_FILE
    if not (args.duration > 0 and math.isfinite(args.duration)):
        fail(f"--duration must be a positive number of seconds, got {args.duration}")
        return EXIT_FILE
    demo = _Demo(args)
    with (
        library_logs(QueueLogHandler(demo.events)),
        stop_on_signals(),
        tempfile.TemporaryDirectory(prefix="sa-token-demo-") as tmp,
    ):
        return _run(args, demo, parts, Path(tmp))


def _imports() -> Optional[dict[str, Any]]:
    """The demo's parts, or None after printing the install hint when a dependency is missing."""
    try:  # lazily: inspect and watch need none of these
        import requests

        from sa_token.requests import TokenAuth
        from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer
        from sa_token.testing.apiserver import FakeAPIServer
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top in _DEPENDENCIES:
            fail(f"the demo needs {top!r}, which is not installed: {INSTALL_HINT}")
        else:
            fail(f"the demo cannot import {exc.name!r} ({exc}): reinstall sa-token ({INSTALL_HINT})")
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
        self.out = Output()
        self.start = _clock.mono()
        self.calls = 0
        self.failures = 0
        self.reloads = 0
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def elapsed(self) -> float:
        return _clock.mono() - self.start

    def emit(self, event: str, *text: Part, **fields: Any) -> None:
        if self.args.json:
            self.out.json({"event": event, "t": round(self.elapsed(), 3), **fields})
        else:
            self.out.line(f"{self.elapsed():6.1f}s  ", *text)

    def drain(self) -> None:
        while True:
            try:
                kind, payload = self.events.get_nowait()
            except queue.Empty:
                return
            if kind == "rotation":
                tok: Token = payload
                self.reloads += 1
                exp = tok.claims.get("exp")
                self.emit(
                    "rotation",
                    ok("rotation"),
                    f"  the client picked up a new token: {short(tok)}, "
                    f"expires {_fmt.iso(exp)} ({_fmt.relative(exp, _clock.wall())})",
                    jti=tok.claims.get("jti"),
                    expires_at=_fmt.iso(exp),
                )
            else:
                self.emit("warning", warn("warning"), f"   {payload}", message=payload)


def _run(args: argparse.Namespace, demo: _Demo, parts: Mapping[str, Any], tmp: Path) -> int:
    requests = parts["requests"]
    try:
        issuer = parts["TokenIssuer"]()  # needs cryptography
        server = parts["FakeAPIServer"](issuer, audiences=[AUDIENCE], tls=True)  # needs trustme
    except ImportError as exc:
        fail(f"the demo needs a package that is not installed ({exc}): {INSTALL_HINT}")
        return EXIT_FILE
    with contextlib.ExitStack() as stack:
        stack.enter_context(server)
        volume = parts["ProjectedVolume"](tmp / "serviceaccount")
        kubelet = parts["Kubelet"](
            volume, issuer, audiences=[AUDIENCE], expiration_seconds=TOKEN_SECONDS, ca_pem=server.ca_pem
        )
        first = parse_token(kubelet.rotate())  # a Token: no frame holds the string
        stack.callback(kubelet.stop)
        source = stack.enter_context(TokenSource(volume.token_path, audience=AUDIENCE))
        source.subscribe(lambda tok: demo.events.put(("rotation", tok)))
        session = stack.enter_context(requests.Session())
        session.auth = parts["TokenAuth"](source)
        # The CA the kubelet wrote into the volume. Passed per request: requests lets the
        # REQUESTS_CA_BUNDLE environment variable override session.verify (psf/requests#3829).
        ca_file = str(volume.path("ca.crt"))
        url = f"{server.url.rstrip('/')}/api/v1/namespaces/default/pods"
        indent = " " * 9
        demo.emit(
            "start",
            f"kubelet: projected volume {_fmt.path(volume.directory)}, a new {TOKEN_SECONDS}s token every "
            f"{ROTATE_EVERY:g}s",
            volume=_fmt.path(volume.directory),
            server=server.url,
            duration=args.duration,
        )
        if not args.json:
            demo.out.line(f"{indent}API server: {server.url} (verifies RS256, aud, exp)")
            demo.out.line(
                f"{indent}client: requests + sa_token.requests.TokenAuth, one call every {CALL_EVERY:g}s "
                f"for {args.duration:g}s"
            )
        kubelet.start(every=ROTATE_EVERY)
        interrupted = False
        try:
            while demo.elapsed() < args.duration:
                demo.drain()
                _call(demo, session, url, ca_file, server)
                demo.drain()
                time.sleep(max(0.0, min(CALL_EVERY, args.duration - demo.elapsed())))
        except (KeyboardInterrupt, Stop):
            interrupted = True
        kubelet.stop()
        time.sleep(0.05)  # let a rotation that raced the stop reach the subscriber
        demo.drain()
        stale = _stale_check(requests, url, first, ca_file)
        rotations = max(0, kubelet.rotations - 1)  # the first write is not a rotation
    ok_ = demo.failures == 0 and demo.calls > 0
    if args.json:
        demo.out.json(
            {
                "event": "summary",
                "t": round(demo.elapsed(), 3),
                "calls": demo.calls,
                "rotations": rotations,
                "reloads": demo.reloads,
                "failures": demo.failures,
                "stale_token_status": stale,
                "interrupted": interrupted,
                "ok": ok_,
            }
        )
    else:
        demo.out.table(
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
                ("result", ok("OK") if ok_ else bad("FAILED")),
            ]
        )
    if not ok_:
        fail(f"demo failed: {demo.failures} of {demo.calls} calls failed")
        return EXIT_INVALID
    return EXIT_OK


def _call(demo: _Demo, session: Any, url: str, ca_file: str, server: Any) -> None:
    demo.calls += 1
    n = demo.calls
    try:
        resp = session.get(url, verify=ca_file, timeout=CALL_TIMEOUT)
    except Exception as exc:  # any transport error is a failed call
        demo.failures += 1
        name = type(exc).__name__
        demo.emit("call", f"call {n:3d}  ", bad("ERROR"), f" {name}", n=n, status=None, error=name)
        return
    status = resp.status_code
    label = f"{status} {resp.reason}"
    if status != 200:
        demo.failures += 1
    seen = server.requests
    jti = seen[-1].token_jti if seen else None  # what the server saw: the token's jti, never the token
    demo.emit(
        "call",
        f"call {n:3d}  ",
        ok(label) if status == 200 else bad(label),
        f"  token jti {str(jti)[:8]}",
        n=n,
        status=status,
        jti=jti,
    )


def _stale_check(requests: Any, url: str, token: Token, ca_file: str) -> Optional[int]:
    """Send the first token (read once at the start) again: the server rejects it once expired."""
    try:
        resp = requests.get(
            url, headers={"Authorization": f"Bearer {token.value}"}, verify=ca_file, timeout=CALL_TIMEOUT
        )
    except Exception:  # the server is gone: no verdict
        return None
    return int(resp.status_code)

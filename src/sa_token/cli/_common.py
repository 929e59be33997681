"""What the commands share: the command interface, the path argument, what a path's mount and
file say, library log routing, and stopping on signals."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import queue
import signal
import stat
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any, Optional, Protocol

from sa_token import _fmt
from sa_token._hub import DATA_DIR, volume_root
from sa_token._source import DEFAULT_TOKEN_PATH
from sa_token._token import Token
from sa_token.errors import TokenFileError

from ._output import LIBRARY_PREFIX

__all__ = [
    "Command",
    "QueueLogHandler",
    "add_path_argument",
    "Stop",
    "describe",
    "file_facts",
    "library_logs",
    "mount_facts",
    "short",
    "stop_on_signals",
    "token_path",
]


class Command(Protocol):
    """A subcommand: a module with these names (see `sa_token.cli.inspect`).

    `run` returns the exit code (`EXIT_OK`, `EXIT_INVALID`, `EXIT_FILE`) after printing its
    one-line reason with `fail` when it is not 0.
    """

    NAME: str
    HELP: str
    DESCRIPTION: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def add_path_argument(parser: argparse.ArgumentParser) -> None:
    """The optional ``PATH`` argument, defaulting to the in-cluster token."""
    parser.add_argument(
        "path",
        nargs="?",
        default=DEFAULT_TOKEN_PATH,
        metavar="PATH",
        help=f"the token file (default {DEFAULT_TOKEN_PATH})",
    )


def token_path(arg: str) -> str:
    """The absolute token path for a command-line argument.

    Raises:
        TokenFileError: (reason ``"not-a-path"``) the argument looks like a token, as after
            `sa-token inspect "$(cat token)"`: the token must not be echoed as a path.
    """
    if _fmt.looks_like_jwt(arg):
        raise TokenFileError(
            "this looks like a token, not a path: pass the path of the token file "
            "(for example /var/run/secrets/kubernetes.io/serviceaccount/token)",
            reason="not-a-path",
        )
    return os.path.abspath(arg)


def describe(exc: BaseException, path: Optional[str]) -> str:
    """The message of ``exc`` with ``path`` shown as `sa_token._fmt.path` shows paths
    (bounded, escaped), however the raising code quoted it."""
    text = str(exc)
    return text.replace(path, _fmt.path(path)) if path else text


def mount_facts(path: str) -> dict[str, Any]:
    """Whether ``path`` is in a projected volume (rotated in place) or a static file."""
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
        target: Optional[str] = _fmt.path(os.readlink(data))
    except OSError:
        target = None
    facts: dict[str, Any] = {
        "kind": "projected",
        "volume_root": _fmt.path(root),
        "data_dir": target,
        "note": None,
    }
    real = os.path.realpath(path)
    current = os.path.realpath(data)
    if not (real == current or real.startswith(current + os.sep)):
        facts["note"] = (
            f"the path resolves to {_fmt.path(real)}, outside the current ..data generation: it will go "
            "stale; use the path through the volume's top-level link"
        )
    return facts


def file_facts(path: str) -> dict[str, Any]:
    """Mode, owner and link of the file (``OSError`` if it is gone)."""
    st = os.stat(path)
    return {
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "uid": st.st_uid,
        "gid": st.st_gid,
        "owner": _user_name(st.st_uid),
        "group": _group_name(st.st_gid),
        "symlink": os.path.islink(path),
        "resolves_to": _fmt.path(os.path.realpath(path)),
    }


def _user_name(uid: int) -> Optional[str]:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):  # not POSIX, or a uid with no passwd entry (containers)
        return None


def _group_name(gid: int) -> Optional[str]:
    try:
        import grp

        return grp.getgrgid(gid).gr_name
    except (ImportError, KeyError):
        return None


def short(tok: Token) -> str:
    """A token's short name for people: the start of its ``jti``."""
    jti = tok.claims.get("jti")
    return f"jti {str(jti)[:8]}" if jti else "(no jti)"


# ----------------------------------------------------------------------- library logs -----
class QueueLogHandler(logging.Handler):
    """The library's warnings as events ``("read_failed" | "warning", message)`` on a queue,
    for commands that show them in their own stream (`watch`, `demo`)."""

    def __init__(self, events: queue.Queue[tuple[str, Any]]) -> None:
        super().__init__(logging.WARNING)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # a broken record must not kill the thread that logged it
            return
        if msg.startswith(LIBRARY_PREFIX):
            msg = msg[len(LIBRARY_PREFIX) :]
        kind = "read_failed" if msg.startswith("re-read failed") else "warning"
        self.events.put((kind, msg))


_routes: list[logging.Handler] = []
_routes_lock = threading.Lock()


@contextlib.contextmanager
def library_logs(handler: logging.Handler) -> Iterator[None]:
    """Send the ``sa_token`` logger's records to ``handler`` (instead of the handler an outer
    `library_logs` installed) for the duration. Other handlers are left alone."""
    logger = logging.getLogger("sa_token")
    with _routes_lock:
        outer = _routes[-1] if _routes else None
        _routes.append(handler)
        logger.addHandler(handler)
        if outer is not None:
            logger.removeHandler(outer)
    try:
        yield
    finally:
        with _routes_lock:
            _routes.remove(handler)
            logger.removeHandler(handler)
            if outer is not None and outer in _routes:
                logger.addHandler(outer)


# ----------------------------------------------------------------------- signals ----------
class Stop(Exception):
    """Raised in the main thread by the SIGTERM handler (SIGINT raises ``KeyboardInterrupt``)."""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM raises `Stop` in the main thread for the duration; the old handler is restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Optional[FrameType]) -> None:
        raise Stop(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

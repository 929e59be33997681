"""What the commands share: the command interface, the path argument, what a path's mount and
file say. Light on purpose (``os`` and ``stat``): `sa-token check` runs as an exec probe every
few seconds. Log routing and signals are in `sa_token.cli._runtime`."""

from __future__ import annotations

import os
import stat

from sa_token import _fmt
from sa_token._paths import DATA_DIR, DEFAULT_TOKEN_PATH, volume_root
from sa_token.errors import TokenFileError

TYPE_CHECKING = False  # not typing's: an exec probe must not pay for importing it
if TYPE_CHECKING:
    import argparse
    from typing import Any, Optional, Protocol

    from sa_token._token import Token

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

__all__ = ["add_path_argument", "describe", "file_facts", "mount_facts", "short", "token_path"]


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

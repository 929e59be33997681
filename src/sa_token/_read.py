"""Reading a token file safely: regular files only, bounded size, one clear error per cause."""

from __future__ import annotations

import errno as _errno
import os
import stat

from ._token import Token, parse_token
from .errors import MalformedTokenError, TokenFileError

__all__ = ["MAX_TOKEN_BYTES", "TooLarge", "read_bounded", "read_token_file"]

# A bound ServiceAccount JWT is about 1 KiB; 64 KiB leaves room for any claim set a cluster adds
# while refusing to load a file that is obviously not a token (a log, a core dump...).
MAX_TOKEN_BYTES = 64 * 1024
# The kubelet deletes the old timestamped directory right after the ..data swap; a read that
# resolved ..data just before the swap can hit ENOENT. The new generation is already published,
# so an immediate retry reads it. Three attempts cover back-to-back swaps.
_READ_ATTEMPTS = 3


def read_bounded(path: str, limit: int) -> bytes:
    """The bytes of the regular file at ``path`` (symlinks followed), at most ``limit`` of them.

    Raises ``OSError``: ``IsADirectoryError``, ``EINVAL`` for a FIFO or device (opened without
    blocking, so it cannot hang), `TooLarge` past ``limit``. ``FileNotFoundError`` is
    retried: the kubelet removes the old generation right after the ``..data`` swap.
    """
    for attempt in range(_READ_ATTEMPTS):
        try:
            return _read_once(path, limit)
        except FileNotFoundError:
            if attempt == _READ_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def read_token_file(path: str) -> Token:
    """Read, strip and parse the token at ``path`` (symlinks followed).

    Raises [`TokenFileError`][sa_token.errors.TokenFileError] (missing, unreadable, not a regular file, empty,
    too large) or [`MalformedTokenError`][sa_token.errors.MalformedTokenError]; messages name the path and
    never contain the token.
    """
    try:
        raw = read_bounded(path, MAX_TOKEN_BYTES)
    except OSError as exc:
        raise _file_error(path, exc) from None
    text = raw.strip()
    if not text:
        raise TokenFileError(
            f"token file {path} is empty{' (whitespace only)' if raw else ''}; "
            "the kubelet may be mid-write, or the volume is not a ServiceAccount token volume",
            path=path,
        )
    # Checked before decoding, not by catching UnicodeDecodeError: that exception holds the whole
    # file (token included) and would stay reachable as the new error's __context__.
    if not text.isascii():
        raise MalformedTokenError(f"token file {path} is not a JWT: it contains non-ASCII bytes", path=path)
    return parse_token(text.decode("ascii"), path=path)


def _read_once(path: str, limit: int) -> bytes:
    # O_NONBLOCK: a FIFO or device at the path must not hang the caller.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(_errno.EISDIR, "is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise OSError(_errno.EINVAL, "not a regular file")
        if st.st_size > limit:
            raise TooLarge(st.st_size)
        chunks = []
        remaining = limit + 1  # the size can grow after fstat: read one byte more to notice
        while remaining > 0:
            want = min(remaining, 1 << 20)
            chunk = os.read(fd, want)
            chunks.append(chunk)
            remaining -= len(chunk)
            if len(chunk) < want:  # a short read of a regular file is its end: no extra syscall
                break
        data = b"".join(chunks)
        if len(data) > limit:
            raise TooLarge(len(data))
        return data
    finally:
        os.close(fd)


class TooLarge(OSError):
    """The file is larger than the reader's limit."""

    def __init__(self, size: int) -> None:
        super().__init__(_errno.EFBIG, "too large")
        self.size = size


def _file_error(path: str, exc: OSError) -> TokenFileError:
    if isinstance(exc, TooLarge):
        return TokenFileError(
            f"token file {path} is {exc.size} bytes, larger than any JWT (limit {MAX_TOKEN_BYTES}); "
            "check that the path points at a ServiceAccount token",
            path=path,
        )
    code = exc.errno
    if isinstance(exc, FileNotFoundError):
        hint = (
            "check the path; in a pod, mount a projected serviceAccountToken volume there "
            "(automountServiceAccountToken must not be false)"
        )
        if os.path.islink(path):
            hint = "it is a dangling symlink (the projected volume's ..data target is gone)"
        return TokenFileError(f"token file {path} does not exist: {hint}", path=path, errno=code)
    if isinstance(exc, PermissionError):
        return TokenFileError(
            f"cannot read token file {path}: {_permission_hint(path)}", path=path, errno=code
        )
    if isinstance(exc, IsADirectoryError):
        return TokenFileError(
            f"token file {path} is a directory, not a file; point at the token inside the volume",
            path=path,
            errno=code,
        )
    if code == _errno.ELOOP:
        return TokenFileError(f"token file {path} is a symlink loop", path=path, errno=code)
    if code == _errno.EINVAL:
        return TokenFileError(f"token file {path} is not a regular file", path=path, errno=code)
    reason = os.strerror(code) if code else type(exc).__name__
    return TokenFileError(f"cannot read token file {path}: {reason}", path=path, errno=code)


def _permission_hint(path: str) -> str:
    try:
        st = os.stat(path)
        owner = f"mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid} gid {st.st_gid}"
    except OSError:
        owner = "mode unknown"
    me = f"this process runs as uid {os.geteuid()} gid {os.getegid()}" if hasattr(os, "geteuid") else ""
    return (
        f"permission denied ({owner}; {me}). Projected tokens are 0600, or 0640 with fsGroup: "
        "run as the file's owner (runAsUser) or set the pod's securityContext.fsGroup"
    )

"""Reading small files safely, and one way of saying why a file could not be used.

* `read_bounded`: the bytes of a file, at most a limit, opened without blocking (a FIFO or a
  device at the path cannot hang the caller), in three system calls (open, read, close).
* `describe`: the typed error for an `OSError`, naming the file and the cause, for the token,
  CA and namespace readers alike. A path that looks like a token is never echoed.
* `read_token_file`: read, strip and parse a token file.

Why three system calls and a GIL-holding variant: each system call releases the GIL, and getting it
back while other threads run Python code costs up to a switch interval (5 ms) per call, often several
(the waiting threads take turns). A rotation picked up by the watcher thread must not wait for
four of them; on tmpfs (every projected volume is one) open/read/close cannot block, so the
watcher thread makes them through `ctypes.PyDLL`, which keeps the GIL. See docs/model.md.
"""

from __future__ import annotations

import errno as _errno
import os
import stat
import sys

from . import _fmt
from ._token import Token, parse_token
from .errors import MalformedTokenError, TokenError, TokenFileError

TYPE_CHECKING = False  # not typing's: this module is on `sa-token check`'s path (an exec probe)
if TYPE_CHECKING:
    import ctypes
    from typing import Optional

__all__ = [
    "MAX_TOKEN_BYTES", "Identity", "TooLarge", "describe", "identity", "on_memory_fs", "read_bounded",
    "read_token_file",
]

# A bound ServiceAccount JWT is about 1 KiB; 64 KiB leaves room for any claim set a cluster adds
# while refusing to load a file that is obviously not a token (a log, a core dump...).
MAX_TOKEN_BYTES = 64 * 1024
# The kubelet deletes the old timestamped directory right after the ..data swap; a read that
# resolved ..data just before the swap can hit ENOENT. The new generation is already published,
# so an immediate retry reads it. Three attempts cover back-to-back swaps.
_READ_ATTEMPTS = 3
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
# statfs(2) f_type of the memory file systems a projected volume lives on (linux/magic.h).
_MEMORY_FS = {0x01021994, 0x858458F6}  # TMPFS_MAGIC, RAMFS_MAGIC

def _libc() -> tuple[Optional[ctypes.CDLL], Optional[ctypes.PyDLL]]:
    """libc twice: for statfs, and for reads that keep the GIL (PyDLL does not release it)."""
    import ctypes  # (imported by `load_libc` already)

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        keeping_gil = ctypes.PyDLL(None, use_errno=True)
        keeping_gil.open.argtypes = [ctypes.c_char_p, ctypes.c_int]
        keeping_gil.open.restype = ctypes.c_int
        keeping_gil.read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
        keeping_gil.read.restype = ctypes.c_ssize_t
        keeping_gil.close.argtypes = [ctypes.c_int]
        keeping_gil.close.restype = ctypes.c_int
        try:  # statx (glibc 2.28): its layout is the same on every architecture, unlike stat's
            keeping_gil.statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                                          ctypes.c_void_p]
            keeping_gil.statx.restype = ctypes.c_int
        except AttributeError:  # pragma: no cover - an older libc: os.fstat instead
            pass
    except (OSError, AttributeError):  # pragma: no cover - not a Linux/glibc-like libc
        return None, None
    return libc, keeping_gil


_LIBC: Optional[ctypes.CDLL] = None
_LIBC_GIL: Optional[ctypes.PyDLL] = None
_LOADED = False


def load_libc() -> None:
    """Load ``ctypes`` and libc, once (`TokenSource`'s modules do it when imported: a file read
    then never imports anything, even with no descriptor left). `sa-token check`, which reads
    one file without holding the GIL, never loads them."""
    global _LIBC, _LIBC_GIL, _LOADED  # noqa: PLW0603 - one libc per process
    if _LOADED:
        return
    try:
        import ctypes  # noqa: F401 - loaded here, used by `_libc` and the reads
    except ImportError:  # no descriptor or memory to load it with now: tried again at the next call
        return
    _LIBC, _LIBC_GIL = _libc()
    _LOADED = True


def on_memory_fs(path: str) -> bool:
    """Whether ``path`` is on tmpfs or ramfs, where reading a small file cannot block."""
    load_libc()
    if _LIBC is None:
        return False
    import ctypes

    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    try:
        if _LIBC.statfs(os.fsencode(path), buf) != 0:
            return False
    except (AttributeError, ValueError):  # pragma: no cover - no statfs, or a NUL in the path
        return False
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF in _MEMORY_FS


class TooLarge(OSError):
    """The file is larger than the reader's limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(_errno.EFBIG, "too large")
        self.size = size
        self.limit = limit


def read_bounded(
    path: str, limit: int, *, hold_gil: bool = False, seen: Optional[list[Identity]] = None
) -> bytes:
    """The bytes of the regular file at ``path`` (symlinks followed), at most ``limit`` of them.

    Raises `OSError`: `IsADirectoryError` for a directory, ``EINVAL`` for anything else that is
    not a regular file (a FIFO, a device: never read), `TooLarge` past ``limit``.
    ``FileNotFoundError`` is retried: the kubelet removes the old generation right after the
    ``..data`` swap. ``hold_gil``: read without releasing the GIL (only for memory file systems).
    ``seen``: the file's `identity` as read is appended to it.
    """
    read_once = _read_holding_gil if hold_gil and _LIBC_GIL is not None else _read_once
    for attempt in range(_READ_ATTEMPTS):
        try:
            data, ident = read_once(path, limit + 1)  # one byte more than allowed: to notice "too large"
        except FileNotFoundError:
            if attempt == _READ_ATTEMPTS - 1:
                raise
            continue
        if seen is not None:
            seen.append(ident)
        if len(data) > limit:
            raise TooLarge(len(data), limit)
        return data
    raise AssertionError("unreachable")  # pragma: no cover


# statx(2): AT_EMPTY_PATH (the descriptor itself); STATX_TYPE|MODE|MTIME|INO|SIZE; and where
# struct statx (the same on every architecture) holds stx_mode (u16), stx_ino, stx_size (u64)
# and stx_mtime (i64 seconds, u32 nanoseconds).
_AT_EMPTY_PATH, _STATX_MASK, _STATX_SIZE = 0x1000, 0x343, 256
_STATX_MODE, _STATX_INO, _STATX_FILE_SIZE, _STATX_MTIME = 0x1C, 0x20, 0x28, 0x70

Identity = tuple[int, int, int]  # (inode, size, mtime in ns): what a changed file changes


def identity(path: str) -> Optional[Identity]:
    """The identity of the file at ``path`` now (symlinks followed), ``None`` if it is gone:
    one ``stat``, to tell whether the file changed since it was read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _not_regular(mode: int, path: str) -> Optional[OSError]:
    """The error for a descriptor that is not a regular file (SECURITY.md: only regular files
    are read; a FIFO that holds data must not be drained and served)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return IsADirectoryError(_errno.EISDIR, os.strerror(_errno.EISDIR), path)
    return OSError(_errno.EINVAL, "not a regular file", path)


def _read_once(path: str, size: int) -> tuple[bytes, Identity]:
    # One read: a regular file returns everything up to `size` at once. The descriptor is
    # checked first: a FIFO or a device is refused, not read.
    fd = os.open(path, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        problem = _not_regular(st.st_mode, path)
        if problem is not None:
            raise problem
        return os.read(fd, size), (st.st_ino, st.st_size, st.st_mtime_ns)
    finally:
        os.close(fd)


def _stat_holding_gil(libc: ctypes.PyDLL, fd: int) -> Optional[tuple[int, Identity]]:
    """(mode, identity) of ``fd`` by statx, keeping the GIL; ``None`` without statx."""
    import ctypes  # (loaded already: `load_libc`)

    statx = getattr(libc, "statx", None)
    if statx is None:  # pragma: no cover - an older libc
        return None
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if statx(fd, b"", _AT_EMPTY_PATH, _STATX_MASK, buf) != 0:
        return None
    u64 = ctypes.c_uint64.from_buffer
    mtime = ctypes.c_int64.from_buffer(buf, _STATX_MTIME).value * 1_000_000_000 + ctypes.c_uint32.from_buffer(
        buf, _STATX_MTIME + 8
    ).value
    return ctypes.c_uint16.from_buffer(buf, _STATX_MODE).value, (
        u64(buf, _STATX_INO).value,
        u64(buf, _STATX_FILE_SIZE).value,
        mtime,
    )


def _read_holding_gil(path: str, size: int) -> tuple[bytes, Identity]:
    import ctypes  # (loaded already: `load_libc`)

    libc = _LIBC_GIL
    assert libc is not None
    sys.audit("open", path, "r", _OPEN_FLAGS)  # as os.open does: audit hooks still see the read
    fd = libc.open(os.fsencode(path), _OPEN_FLAGS)
    if fd < 0:
        raise _errno_error(path)
    found = _stat_holding_gil(libc, fd)
    if found is None:  # pragma: no cover - an older libc
        st = os.fstat(fd)
        found = st.st_mode, (st.st_ino, st.st_size, st.st_mtime_ns)
    mode, ident = found
    problem = _not_regular(mode, path)
    if problem is not None:
        libc.close(fd)
        raise problem
    buf = ctypes.create_string_buffer(size)
    n = libc.read(fd, buf, size)
    err = _errno_error(path) if n < 0 else None
    libc.close(fd)
    if err is not None:
        raise err
    return buf.raw[:n], ident


def _errno_error(path: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code), path)  # OSError picks the subclass for the errno


def read_token_file(path: str, *, hold_gil: bool = False, seen: Optional[list[Identity]] = None) -> Token:
    """Read, strip and parse the token at ``path`` (symlinks followed).

    Raises `TokenFileError` (missing, unreadable, not a regular file, empty, too large) or
    `MalformedTokenError`; messages name the path and never contain the token. The error's
    traceback starts here: the frames that held the file's bytes are not kept on it.
    """
    try:
        return _read_token(path, hold_gil, seen)
    except TokenError as exc:
        raise exc.with_traceback(None) from None


def _read_token(path: str, hold_gil: bool, seen: Optional[list[Identity]]) -> Token:
    try:
        raw = read_bounded(path, MAX_TOKEN_BYTES, hold_gil=hold_gil, seen=seen)
    except OSError as exc:
        raise describe(path, exc) from None
    text = raw.strip()
    if not text:
        if not _is_regular(path):
            raise describe(path, OSError(_errno.EINVAL, "not a regular file"))
        raise TokenFileError(
            f"token file {_fmt.path(path)} is empty{' (whitespace only)' if raw else ''}; "
            "the kubelet may be mid-write, or the volume is not a ServiceAccount token volume",
            path=path,
            reason="empty",
        )
    # Checked before decoding, not by catching UnicodeDecodeError: that exception holds the whole
    # file (token included) and would stay reachable as the new error's __context__.
    if not text.isascii():
        raise MalformedTokenError(
            f"token file {_fmt.path(path)} is not a JWT: it contains non-ASCII bytes", path=path
        )
    return parse_token(text.decode("ascii"), path=path)


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True  # gone meanwhile: report what the read saw


# What each kind of file is, for the messages: (its name, what to check when it is missing).
_KINDS = {
    "token": (
        "token file",
        "check the path; in a pod, mount a projected serviceAccountToken volume there "
        "(automountServiceAccountToken must not be false)",
    ),
    "CA": (
        "CA file",
        "outside a pod, pass the CA bundle's path; in a pod, check that the kube-api-access (or a "
        "projected configMap kube-root-ca.crt) volume is mounted",
    ),
    "namespace": (
        "namespace file",
        "in a pod, it is mounted with the ServiceAccount token (automountServiceAccountToken must not "
        "be false)",
    ),
}


def describe(
    path: str, exc: OSError, *, kind: str = "token", error: type[TokenFileError] = TokenFileError
) -> TokenFileError:
    """The typed error for ``exc`` raised while reading ``path``: the file and the cause, what
    to check, a stable ``reason``; never the path itself when it looks like a token."""
    name, missing = _KINDS[kind]
    if isinstance(exc, TooLarge) and not _is_regular(path):  # /dev/zero and the like
        exc = OSError(_errno.EINVAL, "not a regular file")
    if _fmt.looks_like_jwt(path):
        return error(
            f"the {name} path given looks like a token, not a path: pass the path of the file that "
            "holds it (the value is not repeated here)",
            path=None,
            errno=exc.errno,
            reason="not-a-path",
        )
    message, reason = _cause(path, exc, kind, name, missing)
    return error(message, path=path, errno=None if isinstance(exc, TooLarge) else exc.errno, reason=reason)


# Causes told by their errno alone: (errnos, the message, with {name} and {shown}, the reason).
_BY_ERRNO = (
    ((_errno.EISDIR,), "{name} {shown} is a directory, not a file; point at the file inside the volume",
     "is-a-directory"),
    ((_errno.ELOOP,), "{name} {shown} is a symlink loop", "symlink-loop"),
    # what a FIFO or a device gives
    ((_errno.EINVAL, _errno.EAGAIN, _errno.ENXIO), "{name} {shown} is not a regular file", "not-a-file"),
    ((_errno.ENAMETOOLONG,), "{name} path {shown} is too long to be a path", "missing"),
)


def _cause(path: str, exc: OSError, kind: str, name: str, missing: str) -> tuple[str, str]:
    """The message and the ``reason`` for a failed read of ``path``."""
    shown = _fmt.path(path)
    code = exc.errno
    if isinstance(exc, TooLarge):
        what = "any JWT" if kind == "token" else f"any {kind} file"
        return (
            f"{name} {shown} is {exc.size} bytes or more, larger than {what} (limit {exc.limit}); "
            "check that the path points at the right file"
        ), "too-large"
    if isinstance(exc, FileNotFoundError):
        if os.path.islink(path):
            missing = "it is a dangling symlink (the projected volume's ..data target is gone)"
        return f"{name} {shown} does not exist: {missing}", "missing"
    if isinstance(exc, PermissionError):
        return f"cannot read {name} {shown}: {_permission_hint(path)}", "permission-denied"
    for codes, message, reason in _BY_ERRNO:
        if code in codes:
            return message.format(name=name, shown=shown), reason
    return f"cannot read {name} {shown}: {os.strerror(code) if code else type(exc).__name__}", "unreadable"


def _permission_hint(path: str) -> str:
    try:
        st = os.stat(path)
        owner = f"mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid} gid {st.st_gid}"
    except OSError:
        owner = "mode unknown"
    me = f"; this process runs as uid {os.geteuid()} gid {os.getegid()}" if hasattr(os, "geteuid") else ""
    return (
        f"permission denied ({owner}{me}). Projected tokens are 0600, or 0640 with fsGroup: "
        "run as the file's owner (runAsUser) or set the pod's securityContext.fsGroup"
    )

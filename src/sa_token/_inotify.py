"""Linux inotify, as the hub uses it: the bindings, the event records, and where to watch.

The kubelet never modifies a projected file: it publishes a new generation by renaming
``..data_tmp`` over ``..data`` (kubelet ``atomic_writer.go``). So a projected volume's root
directory is watched for ``IN_MOVED_TO``/``IN_CREATE`` of ``..data``; plain files are watched
through their directory, for their own name being created, replaced, closed after writing or
deleted (`watch_targets`). One `DirWatch` per directory, however many files need it.

No thread and no lock here: the hub calls these under its own lock.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from typing import Optional

from ._hubfile import REARM_FIRST, REARM_MAX, DirWatch
from ._paths import DATA_DIR, volume_root

__all__ = [
    "DATA_DIR",
    "ENTRY_EVENTS",
    "IN_Q_OVERFLOW",
    "LOST",
    "MASK",
    "NO_INOTIFY",
    "REARM_FIRST",
    "REARM_MAX",
    "TRANSIENT_ERRNOS",
    "DirWatch",
    "add_watch",
    "describe_error",
    "init",
    "read_events",
    "rm_watch",
    "volume_root",
    "watch_targets",
]

# inotify_init1 failures that free descriptors or memory cure (the open-file limit, the node's
# instance limit, memory): retried with backoff (REARM_FIRST doubling to REARM_MAX).
TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})
# One read of the inotify descriptor: room for ~2000 events, more than a burst of rotations makes.
_READ_SIZE = 64 * 1024

# inotify(7) masks (stable kernel ABI).
IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x8, 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_Q_OVERFLOW, IN_IGNORED = 0x400, 0x800, 0x4000, 0x8000
IN_ONLYDIR, IN_NONBLOCK, IN_CLOEXEC = 0x01000000, os.O_NONBLOCK, getattr(os, "O_CLOEXEC", 0o2000000)
# Events on a directory's entries that can mean "new content".
ENTRY_EVENTS = IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE | IN_MOVED_FROM
MASK = ENTRY_EVENTS | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
LOST = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED

try:  # the three inotify calls (CDLL: may release the GIL), and read() keeping it (PyDLL)
    _LIBC = ctypes.CDLL(None, use_errno=True)
    _inotify_init1 = _LIBC.inotify_init1
    _inotify_add_watch = _LIBC.inotify_add_watch
    _inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    _inotify_rm_watch = _LIBC.inotify_rm_watch
    _read_keeping_gil = ctypes.PyDLL(None, use_errno=True).read
    _read_keeping_gil.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    _read_keeping_gil.restype = ctypes.c_ssize_t
    NO_INOTIFY: Optional[str] = None
except (OSError, AttributeError) as _exc:  # pragma: no cover - not Linux
    NO_INOTIFY = f"inotify is not available on this platform ({_exc})"


def init() -> int:
    """A new inotify instance (non-blocking, close-on-exec): its descriptor, or ``-errno``."""
    fd: int = _inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    return fd if fd >= 0 else -ctypes.get_errno()


def add_watch(fd: int, directory: str) -> int:
    """Watch ``directory`` for its entries' events: the watch descriptor, or ``-errno``."""
    wd: int = _inotify_add_watch(fd, os.fsencode(directory), MASK)
    return wd if wd >= 0 else -ctypes.get_errno()


def rm_watch(fd: int, wd: int) -> None:
    _inotify_rm_watch(fd, wd)  # EINVAL when already gone: fine


def read_events(fd: int) -> list[tuple[int, int, str]]:
    """What the descriptor has: ``(wd, mask, name)`` records (none when it has nothing)."""
    buf = ctypes.create_string_buffer(_READ_SIZE)
    n = _read_keeping_gil(fd, buf, _READ_SIZE)
    return _events(buf.raw[:n]) if n > 0 else []


def watch_targets(path: str) -> dict[str, set[str]]:
    """The directories to watch for ``path``, each with the entry names that signal new content.

    In a projected volume: its root, for ``..data`` and the path's first element below the root.
    A plain file: its directory, for its name. A symlink to a file elsewhere (a sidecar rewriting
    a file that the path links to): the target's volume root for ``..data``, or the target's
    directory for its name, as well.
    """
    targets: dict[str, set[str]] = {}

    def add(p: str) -> Optional[str]:
        root = volume_root(p)
        if root is not None:
            targets.setdefault(root, set()).update({DATA_DIR, os.path.relpath(p, root).split(os.sep)[0]})
        else:
            targets.setdefault(os.path.dirname(p), set()).add(os.path.basename(p))
        return root

    root = add(path)
    real = os.path.realpath(path)
    # Inside its own projected volume the path resolves into the current generation's directory,
    # which the ..data swap replaces: nothing more to watch. Elsewhere, watch the target too.
    if real != path and (root is None or not real.startswith(root + os.sep)):
        add(real)
    return targets


def _events(data: bytes) -> list[tuple[int, int, str]]:
    """``struct inotify_event`` records: (wd, mask, name)."""
    out = []
    i = 0
    while i + 16 <= len(data):
        wd, mask, _cookie, length = struct.unpack_from("iIII", data, i)
        out.append((wd, mask, os.fsdecode(data[i + 16 : i + 16 + length].rstrip(b"\0"))))
        i += 16 + length
    return out


def describe_error(code: int) -> str:
    if code == errno.EMFILE:
        return (
            "inotify unavailable: too many open files, either the inotify instance limit "
            "(fs.inotify.max_user_instances, 128 per user by default and shared by every container "
            "of that user) or this process's open-file limit (ulimit -n, RLIMIT_NOFILE)"
        )
    if code == errno.ENOSPC:
        return "inotify watch limit reached (fs.inotify.max_user_watches)"
    return f"inotify unavailable ({os.strerror(code) if code else 'unknown error'})"



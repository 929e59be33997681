"""The process-wide watcher: one inotify instance, one reader thread, one timer thread.

However many ``TokenSource`` (and ``CABundle``) objects exist, the process uses:

* one inotify instance (through watchdog's libc bindings) with one watch per *directory*,
  shared by every file in it; inotify instances are scarce (128 per user on most nodes, shared
  by every container running as that user);
* one thread reading it, and one timer thread running every source's deadlines.

The kubelet never modifies a projected file: it publishes a new generation by renaming
``..data_tmp`` over ``..data``. So we watch the volume's root directory and react to
``IN_MOVED_TO``/``IN_CREATE`` of ``..data``, and, for plain files, to the file's own name being
created, replaced by rename, closed after writing or deleted.

When inotify is missing or exhausted the timer keeps everything working (one warning). If the
reader thread dies, the timer starts a new one and re-reads every file (one warning). After
``os.fork()`` the child closes its copies of the parent's descriptors (without writing to them:
they are shared with the parent), starts its own threads and re-reads every file.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import fcntl
import logging
import math
import os
import select
import struct
import threading
import time
import weakref
from typing import Any, Callable, Optional, Protocol

__all__ = ["DATA_DIR", "HUB", "Hub", "Watcher", "volume_root", "watch_targets"]

log = logging.getLogger("sa_token")

DATA_DIR = "..data"
# How often the timer thread wakes when nothing is due: it checks that the inotify thread is
# alive and compares each deadline with the wall clock, so a clock jump past a token's expiry
# turns token()'s clock-free fast path off within a second. Costs ~0.2 ms a tick for 1000 sources.
IDLE_TICK = 1.0
# While a watched directory is gone (volume removed, not yet recreated), retry arming it this often.
REARM_TICK = 1.0
# One read of the inotify fd: room for ~2000 events, far more than a burst of rotations makes.
_READ_SIZE = 64 * 1024

_libc: Any = None
_IMPORT_ERROR: Optional[str] = None
try:  # Linux only; elsewhere the timer does the work.
    from watchdog.observers import inotify_c as _libc
except Exception as _exc:  # pragma: no cover - non-Linux
    _IMPORT_ERROR = f"{type(_exc).__name__}: {_exc}"

# inotify(7) masks (stable kernel ABI).
IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED, IN_ONLYDIR = 0x4000, 0x8000, 0x01000000
# Events on a directory's entries that can mean "new content":
_ENTRY_MASK = (
    IN_CREATE  # the kubelet's first write creates the links; a new plain file
    | IN_MOVED_TO  # ..data_tmp renamed over ..data; a file replaced by rename
    | IN_CLOSE_WRITE  # a plain file rewritten in place, once the writer closed it
    | IN_DELETE  # the file removed: re-read to report it
    | IN_MOVED_FROM
)
_MASK = _ENTRY_MASK | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR


class Watcher(Protocol):
    """What the hub calls when a watched entry changes (``_TokenFile``, ``CABundle``)."""

    def refresh_safely(self) -> None: ...


def volume_root(path: str) -> Optional[str]:
    """The projected volume's root: the nearest ancestor directory of ``path`` that holds
    ``..data``. ``None`` for a plain or static file (a ``subPath`` mount, a copied file), which
    the kubelet never updates."""
    d = os.path.dirname(os.path.abspath(path))
    while True:
        if os.path.lexists(os.path.join(d, DATA_DIR)):
            return d
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def watch_targets(path: str) -> dict[str, set[str]]:
    """Directories to watch for ``path``, with the entry names that signal new content.

    In a projected volume (an ancestor directory holds ``..data``) that is the volume root, for
    ``..data`` and the path's first element below the root. For a plain file it is the
    file's directory, for its name. If the path is a symlink into a projected volume somewhere
    else, that volume's root is watched for ``..data`` too.
    """
    targets: dict[str, set[str]] = {}
    root = volume_root(path)
    if root is not None:
        first = os.path.relpath(path, root).split(os.sep)[0]
        targets[root] = {DATA_DIR, first}
    else:
        targets[os.path.dirname(path)] = {os.path.basename(path)}
    real = os.path.realpath(path)
    if real != path:
        real_root = volume_root(real)
        if real_root is not None and real_root not in targets:
            targets[real_root] = {DATA_DIR}
    return targets


class _DirWatch:
    """One inotify watch on a directory, dispatching events by entry name to watchers."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.wd: Optional[int] = None
        self.names: dict[str, set[Watcher]] = {}

    def on_event(self, mask: int, name: str) -> None:
        if mask & _ENTRY_MASK:
            for w in list(self.names.get(name, ())):
                w.refresh_safely()

    def watchers(self) -> set[Watcher]:
        return {w for ws in list(self.names.values()) for w in list(ws)}


def _oserror(path: str = "") -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code), path) if path else OSError(code, os.strerror(code))


class _Reader(threading.Thread):
    """The inotify instance and the thread that reads it."""

    def __init__(self, hub: Hub) -> None:
        super().__init__(name="sa-token-inotify", daemon=True)
        fd = _libc.inotify_init()
        if fd == -1:
            raise _oserror()
        try:
            fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)  # never leak into exec'd children
            self._wake_r, self._wake_w = os.pipe()
        except OSError:
            os.close(fd)  # an inotify instance is scarce: never leak one
            raise
        self.fd = fd
        self._hub = hub
        self._watches: dict[int, list[_DirWatch]] = {}  # one wd per inode, maybe several paths
        self._lock = threading.Lock()
        self._stopping = False
        self.dead = False

    def add(self, dw: _DirWatch) -> int:
        wd: int = _libc.inotify_add_watch(self.fd, os.fsencode(dw.directory), _MASK)
        if wd == -1:
            raise _oserror(dw.directory)
        with self._lock:
            self._watches.setdefault(wd, []).append(dw)
        return wd

    def remove(self, dw: _DirWatch) -> None:
        wd = dw.wd
        if wd is None:
            return
        with self._lock:
            dws = self._watches.get(wd, [])
            if dw in dws:
                dws.remove(dw)
            if dws:
                return
            self._watches.pop(wd, None)
        _libc.inotify_rm_watch(self.fd, wd)  # EINVAL when the kernel dropped it already: fine

    def run(self) -> None:
        try:
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
            while not self._stopping:
                ready = [fd for fd, _ in poller.poll()]
                if self._wake_r in ready or self._stopping:
                    break
                try:
                    buf = os.read(self.fd, _READ_SIZE)
                except InterruptedError:
                    continue
                self._dispatch(buf)
        except BaseException as exc:  # report, never die silently
            log.warning("sa-token: the inotify watcher thread failed (%s: %s)", type(exc).__name__, exc)
        finally:
            self.dead = True
            if self._stopping:
                self.close_fds()
            else:
                self._hub.reader_died()

    def _dispatch(self, buf: bytes) -> None:
        i = 0
        while i + 16 <= len(buf):
            wd, mask, _cookie, length = struct.unpack_from("iIII", buf, i)
            name = os.fsdecode(buf[i + 16 : i + 16 + length].rstrip(b"\0"))
            i += 16 + length
            if mask & IN_Q_OVERFLOW:
                self._hub.overflow()
                continue
            with self._lock:
                dws = list(self._watches.get(wd, ()))
                if mask & IN_IGNORED:
                    self._watches.pop(wd, None)
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                for dw in dws:
                    self._hub.watch_lost(dw, wd)
                continue
            for dw in dws:
                dw.on_event(mask, name)

    def stop(self) -> None:
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def close_fds(self) -> None:
        """Close the descriptors without touching the kernel objects through them (after a
        fork they are the parent's too: writing to the wake pipe would stop its reader)."""
        for fd in (self.fd, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


class Hub:
    """The process-wide registry of watched directories and sources, and their two threads."""

    def __init__(self) -> None:
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(
                before=self._before_fork,
                after_in_parent=self._after_fork_parent,
                after_in_child=self._after_fork_child,
            )

    def _reset(self) -> None:
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.dirs: dict[str, _DirWatch] = {}
        self.sources: weakref.WeakSet[Any] = weakref.WeakSet()
        self.inotify: Optional[_Reader] = None
        self.inotify_unavailable: Optional[str] = None  # the reason, once warned
        self.timer: Optional[threading.Thread] = None
        self.threads_started = 0
        self.missed_events = False  # the watcher was restarted: re-read every file once
        self.next_wake = -math.inf  # when the sleeping timer thread wakes; -inf while awake
        self.dirty = False  # a deadline was published while the timer was awake
        # Work queued by finalizers: they run inside whatever code allocates (the garbage
        # collector), possibly under any of our locks, so they only append here (no lock) and
        # the timer thread does the work.
        self.deferred: collections.deque[tuple[Callable[..., object], tuple[Any, ...]]] = (
            collections.deque()
        )

    # ---------------------------------------------------------------- registration --------
    def add_source(self, source: Any) -> None:
        with self.cond:
            self.sources.add(source)
            self._ensure_timer()
            self.cond.notify_all()

    def defer(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` soon in the timer thread. Lock-free: for weakref finalizers."""
        self.deferred.append((fn, args))

    def _run_deferred(self) -> None:
        while True:
            try:
                fn, args = self.deferred.popleft()
            except IndexError:
                return
            try:
                fn(*args)
            except Exception:  # pragma: no cover - a bug; keep the timer alive
                log.exception("sa-token: deferred clean-up failed")

    def remove_source(self, source: Any) -> None:
        with self.cond:
            self.sources.discard(source)

    def wake_before(self, deadline: float) -> None:
        """A source has a new deadline (``time.monotonic()``): make sure the timer thread
        wakes for it. Lock-free when the timer already sleeps until before it."""
        planned = self.next_wake
        if planned != -math.inf and deadline >= planned:
            return
        with self.cond:
            if self.next_wake == -math.inf:  # the timer is awake: it rescans before sleeping
                self.dirty = True
            elif deadline < self.next_wake:
                self.next_wake = deadline
                self.cond.notify_all()

    def watch(self, watcher: Watcher, targets: dict[str, set[str]]) -> bool:
        """Arm watches for ``watcher``: ``targets`` maps directories to entry names. Returns
        False when inotify is unavailable or a directory cannot be watched yet (the timer
        covers it, and retries arming)."""
        with self.cond:
            if not self._ensure_inotify():
                return False
            self._ensure_timer()  # it re-arms watches on directories that come back
            ok = True
            for directory, names in targets.items():
                dw = self.dirs.get(directory)
                if dw is None:
                    dw = self.dirs[directory] = _DirWatch(directory)
                for name in names:
                    dw.names.setdefault(name, set()).add(watcher)
                if dw.wd is None and not self._arm(dw):
                    ok = False
            if not ok:
                self.cond.notify_all()
            return ok

    def unwatch(self, watcher: Watcher) -> None:
        with self.lock:
            for directory, dw in list(self.dirs.items()):
                for name, ws in list(dw.names.items()):
                    ws.discard(watcher)
                    if not ws:
                        del dw.names[name]
                if not dw.names:
                    del self.dirs[directory]
                    if self.inotify is not None:
                        self.inotify.remove(dw)
                    dw.wd = None

    def watched_directories(self) -> dict[str, bool]:
        """Directories watched, and whether each watch is armed (for diagnostics and tests)."""
        with self.lock:
            return {d: dw.wd is not None for d, dw in self.dirs.items()}

    # ---------------------------------------------------------------- inotify -------------
    def _inotify_ok(self) -> bool:
        fd = self.inotify
        return fd is not None and not fd.dead and fd.is_alive()

    def _ensure_inotify(self) -> bool:
        if self._inotify_ok():
            return True
        if self.inotify is not None:  # the reader thread died: start a new instance
            log.warning(
                "sa-token: the inotify watcher thread stopped; starting a new one and re-reading tokens"
            )
            self.inotify.close_fds()
            self.inotify = None
            self.missed_events = True
        if self.inotify_unavailable is not None:
            return False
        if _libc is None:
            return self._unavailable(f"inotify is not available on this platform ({_IMPORT_ERROR})")
        try:
            reader = _Reader(self)
        except OSError as exc:
            return self._unavailable(_describe_inotify_error(exc))
        reader.start()
        self.threads_started += 1
        self.inotify = reader
        for dw in self.dirs.values():
            dw.wd = None
            self._arm(dw)
        return True

    def _unavailable(self, reason: str) -> bool:
        self.inotify_unavailable = reason
        log.warning(
            "sa-token: %s; tokens are re-read by the fallback timer instead (every refresh_interval "
            "and at each token's rotation point)",
            reason,
        )
        return False

    def _arm(self, dw: _DirWatch) -> bool:
        if self.inotify is None:
            return False
        try:
            dw.wd = self.inotify.add(dw)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:  # watches exhausted: nothing else will work either
                self._unavailable(_describe_inotify_error(exc))
            return False
        return True

    def watch_lost(self, dw: _DirWatch, wd: int) -> None:
        """The watched directory was removed or moved: re-read now, re-arm from the timer."""
        with self.cond:
            if dw.wd == wd:
                if self.inotify is not None:
                    self.inotify.remove(dw)
                dw.wd = None
                self.cond.notify_all()
        for w in dw.watchers():
            w.refresh_safely()

    def overflow(self) -> None:
        """The kernel dropped events: re-read everything."""
        with self.lock:
            watchers = {w for dw in self.dirs.values() for w in dw.watchers()}
        for w in watchers:
            w.refresh_safely()

    def reader_died(self) -> None:
        with self.cond:
            self.cond.notify_all()

    # ---------------------------------------------------------------- timer ---------------
    def _ensure_timer(self) -> None:
        if self.timer is not None and self.timer.is_alive():
            return
        self.timer = threading.Thread(target=self._run_timer, name="sa-token-timer", daemon=True)
        self.timer.start()
        self.threads_started += 1

    def _scan(self, now: float) -> tuple[list[Any], float]:
        """Under the lock: sources whose background re-read is due, and the next deadline."""
        due: list[Any] = []
        next_due = now + IDLE_TICK
        for src in list(self.sources):
            src._expire_hot(now)
            d = src._bg_due
            if d <= now:
                due.append(src)
            elif d < next_due:
                next_due = d
            next_due = min(next_due, src._hot_until)
        if self.inotify is not None and any(dw.wd is None for dw in self.dirs.values()):
            next_due = min(next_due, now + REARM_TICK)
        return due, next_due

    def _run_timer(self) -> None:
        me = threading.current_thread()
        while True:
            with self.cond:
                if self.timer is not me:
                    return
                self.dirty = False
                due, _ = self._scan(time.monotonic())
                if self.dirs and self.inotify_unavailable is None and not self._inotify_ok():
                    self._ensure_inotify()
                dead = [dw for dw in self.dirs.values() if dw.wd is None]
                rearmed = [dw for dw in dead if os.path.isdir(dw.directory) and self._arm(dw)]
                watchers: set[Watcher] = {src._file for src in due}
                if self.missed_events:  # after a fork or a watcher restart: re-read everything
                    self.missed_events = False
                    rearmed = list(self.dirs.values())
                    watchers |= {src._file for src in self.sources}
            for dw in rearmed:
                watchers |= dw.watchers()
            for w in watchers:  # outside the lock: reads publish new deadlines via wake_before
                w.refresh_safely()
            for src in due:  # a read that failed for every source still moves the deadline on
                src._reschedule_background()
            self._run_deferred()  # outside every lock
            with self.cond:
                if self.timer is not me:
                    return
                now = time.monotonic()
                _, next_due = self._scan(now)
                if self.dirty or next_due <= now or self.deferred:
                    continue
                self.next_wake = next_due
                self.cond.wait(next_due - now)
                self.next_wake = -math.inf  # awake: new deadlines set dirty until the next scan

    # ---------------------------------------------------------------- fork ----------------
    def _before_fork(self) -> None:
        self.lock.acquire()

    def _after_fork_parent(self) -> None:
        self.lock.release()

    def _after_fork_child(self) -> None:
        """In the child: the threads are gone and the inotify fd is the parent's. Forget both
        (closing only our copies of the descriptors) and start over."""
        old_inotify = self.inotify
        dirs = self.dirs
        sources = list(self.sources)
        self._reset()
        if old_inotify is not None:
            old_inotify.close_fds()
        self.dirs = dirs
        for dw in dirs.values():
            dw.wd = None
        watchers = {w for dw in dirs.values() for w in dw.watchers()} | {src._file for src in sources}
        for w in watchers:  # their locks may have been held by a thread that no longer exists
            reset = getattr(w, "_after_fork", None)
            if reset is not None:
                reset()
        for src in sources:
            src._after_fork()
            self.sources.add(src)
        if sources or dirs:
            with self.lock:
                if self.dirs:
                    self._ensure_inotify()
                self.missed_events = True  # the timer re-reads everything: rotations may have
                self._ensure_timer()  # happened while we were being forked


def _describe_inotify_error(exc: OSError) -> str:
    if exc.errno == errno.EMFILE:
        return (
            "inotify unavailable: too many open files, either the inotify instance limit "
            "(fs.inotify.max_user_instances, 128 per user by default and shared by every container "
            "of that user) or this process's open-file limit (ulimit -n, RLIMIT_NOFILE)"
        )
    if exc.errno == errno.ENOSPC:
        return "inotify watch limit reached (fs.inotify.max_user_watches)"
    return f"inotify unavailable ({os.strerror(exc.errno) if exc.errno else exc})"


HUB = Hub()


def hub_stats() -> dict[str, int]:
    """Counters for benchmarks and tests."""
    return {
        "threads_started": HUB.threads_started,
        "inotify_instances": 1 if HUB.inotify is not None else 0,
        "watched_directories": len(HUB.dirs),
        "sources": len(HUB.sources),
    }

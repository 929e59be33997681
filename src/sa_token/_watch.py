"""The process-wide watcher: one inotify instance, one reader thread, one timer thread.

However many ``TokenSource`` objects exist, the process uses:

* one inotify instance (watchdog's ``InotifyFD``) with one watch per *directory*, shared by every
  file in it; inotify instances are scarce (128 per user on most nodes, shared by every
  container running as that user);
* one thread reading it, one timer thread running every source's fallback deadlines.

The kubelet never modifies a projected file: it publishes a new generation by renaming
``..data_tmp`` over ``..data``. So we watch the volume's root directory and react to
``IN_MOVED_TO``/``IN_CREATE`` of ``..data``, and, for plain files, to the file's own name being
created, replaced by rename, closed after writing or deleted.

When inotify is missing or exhausted the timer keeps everything working (one warning). After
``os.fork()`` the child drops the parent's inotify descriptors (without touching them: they
are shared with the parent), starts its own threads and re-reads every file.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from ._source import _TokenFile

__all__ = ["HUB", "Hub"]

log = logging.getLogger("sa_token")

DATA_DIR = "..data"
# How often the timer thread wakes when nothing is due: it then checks that the inotify
# thread is alive and re-arms watches on directories that were removed and recreated.
IDLE_TICK = 30.0
# While a watched directory is gone (volume removed, not yet recreated), retry arming it this often.
REARM_TICK = 1.0

_InotifyFD: Any = None
_IC: Any = None
_IMPORT_ERROR: Optional[str] = None
try:  # Linux only; elsewhere the timer does the work.
    from watchdog.observers import inotify_c as _inotify_c

    _InotifyFD = _inotify_c.InotifyFD
    _IC = _inotify_c.InotifyConstants
except Exception as _exc:  # pragma: no cover - non-Linux
    _IMPORT_ERROR = f"{type(_exc).__name__}: {_exc}"

if _IC is not None:
    # Events on the directory's entries that can mean "new content":
    _ENTRY_MASK = (
        _IC.IN_CREATE  # the kubelet's first write creates the links; a new plain file
        | _IC.IN_MOVED_TO  # ..data_tmp renamed over ..data; a file replaced by rename
        | _IC.IN_CLOSE_WRITE  # a plain file rewritten in place, once the writer closed it
        | _IC.IN_DELETE  # the file removed: re-read to report it
        | _IC.IN_MOVED_FROM
    )
    _MASK = _ENTRY_MASK | _IC.IN_DELETE_SELF | _IC.IN_MOVE_SELF | _IC.IN_ONLYDIR
else:  # pragma: no cover
    _ENTRY_MASK = _MASK = 0


class _DirWatch:
    """One inotify watch on a directory, dispatching events by entry name to token files."""

    def __init__(self, hub: Hub, directory: str) -> None:
        self.hub = hub
        self.directory = directory
        self.wd: Optional[int] = None
        self.names: dict[str, set[_TokenFile]] = {}

    # watchdog WatchCallback protocol -------------------------------------------------------
    def on_event(self, event: Any) -> None:
        if event.mask & (_IC.IN_DELETE_SELF | _IC.IN_MOVE_SELF):
            self.hub.watch_lost(self)
            return
        if not event.mask & _ENTRY_MASK:
            return
        name = os.fsdecode(event.name)
        files = self.names.get(name)
        if files:
            for f in list(files):
                f.refresh_safely()

    def on_watch_deleted(self, _wd: int) -> None:
        self.hub.watch_lost(self)

    def on_queue_overflow(self) -> None:
        for f in self.files():
            f.refresh_safely()

    def files(self) -> set[_TokenFile]:
        return {f for fs in list(self.names.values()) for f in list(fs)}


class Hub:
    """The process-wide registry of watched files, directories and sources."""

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
        self.inotify: Any = None
        self.inotify_unavailable: Optional[str] = None  # reason, once warned
        self.timer: Optional[threading.Thread] = None
        self.threads_started = 0
        self.missed_events = False  # the watcher was restarted: re-read every file once
        self.next_wake = -math.inf  # when the sleeping timer thread wakes; -inf while awake
        self.dirty = False  # a deadline was published while the timer was awake

    # ---------------------------------------------------------------- registration --------
    def add_source(self, source: Any) -> None:
        with self.cond:
            self.sources.add(source)
            self._ensure_timer()
            self.cond.notify_all()

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

    def watch(self, tfile: _TokenFile, targets: dict[str, set[str]]) -> bool:
        """Arm watches for ``tfile``: ``targets`` maps directories to entry names. Returns False
        when inotify is unavailable (the timer covers the file)."""
        with self.lock:
            if not self._ensure_inotify():
                return False
            ok = True
            for directory, names in targets.items():
                dw = self.dirs.get(directory)
                if dw is None:
                    dw = self.dirs[directory] = _DirWatch(self, directory)
                for name in names:
                    dw.names.setdefault(name, set()).add(tfile)
                if dw.wd is None and not self._arm(dw):
                    ok = False
            return ok

    def unwatch(self, tfile: _TokenFile) -> None:
        with self.lock:
            for directory, dw in list(self.dirs.items()):
                for name, files in list(dw.names.items()):
                    files.discard(tfile)
                    if not files:
                        del dw.names[name]
                if not dw.names:
                    del self.dirs[directory]
                    self._disarm(dw)

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
            self._drop_inotify()
            self.missed_events = True
        if self.inotify_unavailable is not None:
            return False
        if _InotifyFD is None:
            return self._unavailable(f"inotify is not available on this platform ({_IMPORT_ERROR})")
        try:
            fd = _Reader(self)
        except OSError as exc:
            return self._unavailable(_describe_inotify_error(exc))
        fd.start()
        self.threads_started += 1
        self.inotify = fd
        for dw in self.dirs.values():
            dw.wd = None
            self._arm(dw)
        return True

    def _unavailable(self, reason: str) -> bool:
        self.inotify_unavailable = reason
        log.warning(
            "sa-token: %s; tokens are re-read by the fallback timer instead (refresh_interval, "
            "and at each token's rotation point)",
            reason,
        )
        return False

    def _arm(self, dw: _DirWatch) -> bool:
        if self.inotify is None:
            return False
        try:
            wd = self.inotify.add_callback(os.fsencode(dw.directory), _MASK, dw, id(dw))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EMFILE):
                self._unavailable(_describe_inotify_error(exc))
            return False
        if wd == -1:  # watchdog swallows EACCES and records a bogus watch
            self.inotify.remove_callbacks([(wd, id(dw))])
            return False
        dw.wd = wd
        return True

    def _disarm(self, dw: _DirWatch) -> None:
        if dw.wd is not None and self.inotify is not None:
            try:
                self.inotify.remove_callbacks([(dw.wd, id(dw))])
            except OSError:
                pass
        dw.wd = None

    def watch_lost(self, dw: _DirWatch) -> None:
        """The watched directory was removed or moved: re-arm from the timer thread."""
        with self.cond:
            if dw.wd is not None and self.inotify is not None:
                try:
                    self.inotify.remove_callbacks([(dw.wd, id(dw))])
                except OSError:
                    pass
            dw.wd = None
            self.cond.notify_all()
        for f in dw.files():
            f.refresh_safely()

    def reader_died(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def _drop_inotify(self) -> None:
        fd, self.inotify = self.inotify, None
        if fd is not None:
            if fd.is_alive():
                try:
                    fd.stop()
                except Exception:  # noqa: S110 - already broken
                    pass
            else:  # nobody reads any more: close the descriptors ourselves
                _close_fds(fd)
        for dw in self.dirs.values():
            dw.wd = None

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
                dead = [dw for dw in self.dirs.values() if dw.wd is None]
                if (
                    self.dirs
                    and self.inotify_unavailable is None
                    and (self.inotify is None or not self.inotify.is_alive())
                ):
                    self._ensure_inotify()
                rearmed = [dw for dw in dead if os.path.isdir(dw.directory) and self._arm(dw)]
            files = {src._file for src in due}
            for dw in rearmed:
                files |= dw.files()
            for f in files:  # outside the lock: reads publish new deadlines through wake_before
                f.refresh_safely()
            for src in due:  # a read that failed for every source still moves the deadline on
                src._reschedule_background()
            with self.cond:
                if self.timer is not me:
                    return
                now = time.monotonic()
                _, next_due = self._scan(now)
                if self.dirty or next_due <= now:
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
            _close_fds(old_inotify)
        self.dirs = dirs
        for dw in dirs.values():
            dw.hub = self
            dw.wd = None
        files = {src._file for src in sources}
        for f in files:
            f._after_fork()
        for src in sources:
            src._after_fork()
            self.sources.add(src)
        if sources:
            with self.lock:
                if self.dirs:
                    self._ensure_inotify()
                self._ensure_timer()
            for f in files:  # rotations may have happened while we were being forked
                f.refresh_safely()


class _Reader(_InotifyFD if _InotifyFD is not None else object):  # type: ignore[misc]
    """watchdog's InotifyFD, with a thread name and a report to the hub if the thread dies."""

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self.name = "sa-token-inotify"
        self._hub = hub

    dead = False

    def run(self) -> None:
        try:
            super().run()
        except BaseException as exc:  # report, never die silently
            log.warning("sa-token: the inotify watcher thread failed (%s: %s)", type(exc).__name__, exc)
        finally:
            self.dead = True
            self._hub.reader_died()


def _close_fds(reader: Any) -> None:
    """Close an InotifyFD's descriptors without going through it (its thread is gone, or they
    are the parent's after a fork: writing to its kill pipe would stop the parent's reader)."""
    for attr in ("_inotify_fd", "_kill_r", "_kill_w"):
        fd = getattr(reader, attr, None)
        if isinstance(fd, int):
            try:
                os.close(fd)
            except OSError:
                pass


def _describe_inotify_error(exc: OSError) -> str:
    if exc.errno == errno.EMFILE:
        return (
            "inotify instance limit reached (fs.inotify.max_user_instances, 128 per user by default "
            "and shared by every container of that user)"
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

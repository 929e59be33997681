"""The hub's inotify side: one inotify instance and one watch per directory, shared by every
file that needs that directory; arming with backoff; what an event means for which files.

Every method runs under the hub's lock (the deadline callbacks, `retry` and `rearm`, take it
themselves and re-read what they find outside it). The system calls are in `sa_token._inotify`.
"""

from __future__ import annotations

import errno
import functools
import os
from typing import TYPE_CHECKING, Optional

from . import _fmt, _inotify, _log
from ._inotify import (
    ENTRY_EVENTS,
    IN_Q_OVERFLOW,
    LOST,
    NO_INOTIFY,
    REARM_FIRST,
    REARM_MAX,
    TRANSIENT_ERRNOS,
    DirWatch,
    describe_error,
    watch_targets,
)

if TYPE_CHECKING:
    from ._hubfile import HubCore, HubFile

__all__ = ["Watches"]


class Watches:
    """Which directory is watched for which files, and the inotify instance behind them."""

    def __init__(self, hub: HubCore) -> None:
        self.hub = hub
        self.dirs: dict[str, DirWatch] = {}
        self._reset()

    def _reset(self) -> None:
        self.wds: dict[int, list[DirWatch]] = {}  # two paths to one directory share its wd
        self.fd: Optional[int] = None  # the inotify instance
        self.unavailable = NO_INOTIFY  # why inotify can never be used here (the platform)
        self.delay = REARM_FIRST  # the next retry of a failed inotify_init1 (EMFILE...)
        self.down: Optional[str] = None  # why inotify_init1 fails, during an outage (warned)
        self.retrying = False  # a retry of inotify_init1 is scheduled
        self.limit_warned = False  # the node's watch limit, warned once per process

    # ------------------------------------------------------------------ files ---------------
    def watch(self, f: HubFile) -> None:
        """Register ``f``'s directories; arm those not armed (once inotify is available)."""
        self.ensure()
        for directory, names in watch_targets(f.path).items():
            dw = self.dirs.get(directory)
            if dw is None:
                dw = self.dirs[directory] = DirWatch(directory)
            for name in names:
                dw.names.setdefault(name, set()).add(f)
            f.dirs.append(dw)
            if dw.wd is None:
                self._arm(dw)

    def unwatch(self, f: HubFile) -> None:
        for dw in f.dirs:
            for name, fs in list(dw.names.items()):
                fs.discard(f)
                if not fs:
                    del dw.names[name]
            if not dw.names and self.dirs.get(dw.directory) is dw:
                del self.dirs[dw.directory]
                self._disarm(dw)
        f.dirs = []

    def armed(self) -> dict[str, bool]:
        """Directories watched, and whether each watch is armed."""
        return {d: dw.wd is not None for d, dw in self.dirs.items()}

    # ------------------------------------------------------------------ the instance --------
    def ensure(self) -> bool:
        """Whether an inotify instance exists, making one if need be. A failure for want of
        descriptors or memory (EMFILE, ENFILE, ENOMEM) is retried with backoff, never
        remembered for good; only a platform without inotify is."""
        if self.fd is not None:
            return True
        if self.unavailable is not None or not self.hub.started:
            return False
        fd = _inotify.init()
        if fd < 0:
            self._failed(-fd)
            return False
        self.fd = fd
        self.delay = REARM_FIRST
        if self.down is not None:
            self.down = None
            self.hub.notes.add(_log.INFO, "sa-token: inotify is available again: rotations are watched")
        self.hub._poke()  # the thread polls the new descriptor from now on
        return True

    def _failed(self, code: int) -> None:
        why = describe_error(code)
        if code not in TRANSIENT_ERRNOS:
            self.unavailable = why
        elif not self.retrying:
            self.retrying = True
            self.hub._schedule(self.delay, self.retry, "inotify")
            self.delay = min(self.delay * 2, REARM_MAX)
        if self.down is None:  # once per outage
            self.down = why
            self.hub.notes.add(
                _log.WARNING,
                "sa-token: %s; tokens are re-read by the fallback timer instead (every "
                "refresh_interval and at each token's rotation point)%s",
                why,
                "" if self.unavailable else " until an inotify instance can be made (retried "
                "with backoff, every minute at most)",
            )

    def retry(self) -> None:
        """Deadline: make the inotify instance that failed; if it works, arm every directory and
        re-read their files (they may have changed while nobody watched)."""
        files: set[HubFile] = set()
        with self.hub.lock:
            self.retrying = False  # a failure now schedules the next retry
            if self.fd is None and self.ensure():
                for dw in self.dirs.values():
                    if dw.wd is None and self._arm(dw):
                        files |= dw.files()
        self.hub._say()
        self.hub.refresh_files(files)

    def start(self, wanted: bool) -> None:
        """In a forked child's first use: the instance (if any file wants it) and every watch."""
        if wanted and self.ensure():
            for dw in self.dirs.values():
                self._arm(dw)

    def forked(self) -> None:
        """In a forked child, at the fork: the instance is the parent's copy (closed, never
        used); the directories stay registered, none armed."""
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
        self._reset()
        for dw in self.dirs.values():
            dw.wd = None

    # ------------------------------------------------------------------ watches -------------
    def _arm(self, dw: DirWatch) -> bool:
        if self.fd is None:
            return False  # armed with the others once an inotify instance exists
        wd = _inotify.add_watch(self.fd, dw.directory)
        if wd < 0:
            code = -wd
            if code in (errno.ENOSPC, errno.ENOMEM) and not self.limit_warned:
                self.limit_warned = True  # once per process: the limit is the node's, not ours
                self.hub.notes.add(
                    _log.WARNING,
                    "sa-token: cannot watch %s: %s; its tokens are re-read by the fallback timer "
                    "until a watch can be armed (retried every minute at most)",
                    _fmt.path(dw.directory),
                    describe_error(code),
                )
            self._rearm_later(dw)
            return False
        dw.wd = wd
        dw.rearm_delay = REARM_FIRST
        self.wds.setdefault(wd, []).append(dw)
        return True

    def _rearm_later(self, dw: DirWatch) -> None:
        self.hub._schedule(dw.rearm_delay, functools.partial(self.rearm, dw))
        dw.rearm_delay = min(dw.rearm_delay * 2, REARM_MAX)

    def _disarm(self, dw: DirWatch) -> None:
        wd, dw.wd = dw.wd, None
        if wd is None:
            return
        sharing = self.wds.get(wd, [])
        if dw in sharing:
            sharing.remove(dw)
        if not sharing:
            self.wds.pop(wd, None)
            if self.fd is not None:
                _inotify.rm_watch(self.fd, wd)

    def rearm(self, dw: DirWatch) -> None:
        """Deadline: arm a watch that failed or was lost; if it works, re-read its files (they
        may have changed while nobody watched)."""
        with self.hub.lock:
            ok = self.dirs.get(dw.directory) is dw and dw.wd is None and self._arm(dw)
            files = dw.files() if ok else set()
        self.hub._say()
        self.hub.refresh_files(files)

    # ------------------------------------------------------------------ events --------------
    def changed_by(self, events: list[tuple[int, int, str]]) -> dict[HubFile, None]:
        """The files the events say changed (ordered, no duplicates)."""
        changed: dict[HubFile, None] = {}
        for wd, mask, name in events:
            if mask & IN_Q_OVERFLOW:  # the kernel dropped events: re-read every watched file
                changed.update(dict.fromkeys(f for dw in self.dirs.values() for f in dw.files()))
                continue
            for dw in list(self.wds.get(wd, ())):
                if mask & LOST:  # the directory itself went away: re-read, re-arm later
                    self.wds.pop(wd, None)
                    dw.wd = None
                    changed.update(dict.fromkeys(dw.files()))
                    if self.dirs.get(dw.directory) is dw:
                        self.hub._schedule(dw.rearm_delay, functools.partial(self.rearm, dw))
                elif mask & ENTRY_EVENTS:
                    changed.update(dict.fromkeys(dw.names.get(name, ())))
        return changed



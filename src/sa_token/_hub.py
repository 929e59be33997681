"""The process-wide watcher: one inotify instance, one thread, one heap of deadlines.

However many `TokenSource` and `CABundle` objects exist, the process uses one inotify instance
(inotify instances are scarce: 128 per user on most nodes, shared by every container running as
that user), one watch per *directory*, and one thread. The thread sleeps in ``poll()`` on the
inotify descriptor and a wake-up pipe, with the time to the earliest deadline as its timeout;
when nothing is due it makes no wake-ups at all.

Nothing here is needed for correctness: `TokenSource.token()` reads the clock itself and
re-reads the file when its snapshot's time is up. The thread only makes pickups early: a
stalled or dead thread delays a rotation's pickup, it never lets an expired token out. Callbacks
never run on it (`sa_token._subscribers`).

Registration is one operation under one lock (`Hub.acquire`/`Hub.release`, reference counted per
file), so constructing, closing and garbage-collecting sources of one path concurrently neither
loses a watch nor leaks one. Finalizers (which run inside the garbage collector, wherever it
strikes, maybe under our locks) only queue their release and poke the thread.

One at-fork handler serves the whole process: the child closes its copies of the parent's
descriptors (without using them: they are shared with the parent), gives every lock-holding
object a fresh lock, starts its own thread and re-reads every file once.

The hub keeps the registry, the thread (`sa_token._watcher`: its loop, its pipe, its start)
and fork recovery. The inotify instance and the directory watches are `sa_token._watches` (the
system calls, `sa_token._inotify`); the deadline heap is `sa_token._deadlines`.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import weakref
from typing import Callable, Optional, TypeVar

from . import _clock, _inotify
from ._deadlines import Deadlines
from ._hubfile import HubFile
from ._inotify import (
    DATA_DIR,
    volume_root,
    watch_targets,
)
from ._locks import Notes, OwnedLock, inside, say
from ._log import log
from ._watcher import Watcher
from ._watches import Watches

__all__ = ["DATA_DIR", "HUB", "Hub", "HubFile", "at_fork_in_child", "volume_root", "watch_targets"]


# The longest sleep handed to poll(): its timeout is a C int of milliseconds (24.8 days at most),
# and a deadline further out (refresh_interval=1e9) must not overflow it. A day: no idle wake-ups
# worth counting.
MAX_SLEEP = 86400.0
_mono = _clock.mono  # the hub's clock for sleeping (CLOCK_BOOTTIME where there is one)

F = TypeVar("F", bound="HubFile")


class Hub:
    """The registry of watched files and directories, the deadline heap, and the one thread."""

    def __init__(self) -> None:
        self._fork_hooks: list[Callable[[], None]] = []
        self._init()
        self.watcher.open()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(before=self._before_fork, after_in_parent=self._after_fork_in_parent,
                                after_in_child=self._after_fork_in_child)

    def _init(self) -> None:
        self.lock = OwnedLock()
        self.notes = Notes()  # what to log once the lock is released (`_say`)
        self.files: dict[str, HubFile] = {}
        self.tracked: weakref.WeakSet[HubFile] = weakref.WeakSet()  # every lock holder, for fork
        self.watches: Watches = Watches(self)  # the inotify instance and the directory watches
        self.deadlines = Deadlines()  # on the hub's clock (`_mono`); carried over a fork whole
        # Work queued without the lock (finalizers, a close() re-entered under our own lock):
        # releases (file, watch, deadline slot), done under the lock by the next registration or
        # the thread; and calls, made by the thread outside the lock.
        self.deferred: list[tuple[HubFile, bool, Optional[object]]] = []
        self.later: list[Callable[[], None]] = []
        self.watcher: Watcher = Watcher(self)  # the one thread and its wake-up pipe
        self.started = True  # False in a forked child until its first use

    def _say(self) -> None:
        """Log what locked sections collected: after the lock is released, never under it."""
        if self.notes and not self.lock.held():
            with self.lock:
                lines = self.notes.take()
            say(lines)

    # ------------------------------------------------------------------ registration -------
    def acquire(self, key: str, factory: Callable[[], F], *, watch: bool) -> F:
        """The file registered under ``key`` (created by ``factory`` if new), with one more user.
        Every `acquire` is paired with one `release` (or `release_later` from a finalizer).

        Raises `ThreadStartError` (and registers nothing) when the watcher thread is not
        running and cannot be started; a later call tries again."""
        if inside():
            raise RuntimeError(
                "sa-token: a TokenSource or CABundle cannot be created while this thread is inside "
                "sa-token's locked work (from a finalizer the garbage collector ran there): create it "
                "outside __del__"
            )
        with self.lock:
            self._release_deferred()
            f = self.files.get(key)
            if f is None:
                f = self.files[key] = factory()
                self.tracked.add(f)
            f.refs += 1
            if watch:
                f.watch_refs += 1
                if f.watch_refs == 1:
                    self.watches.watch(f)
            thread = self._start()
        failure = self.watcher.start(thread)
        if failure is not None:
            self.release(f, watch=watch)
        self._say()
        if failure is not None:
            raise failure
        return f  # type: ignore[return-value]

    def release(self, f: HubFile, *, watch: bool, slot: Optional[object] = None) -> None:
        """One user less (and its deadline ``slot`` cancelled, once no user is left: see
        `Deadlines.vacate`). Deferred, not waited for, when the calling thread holds a library lock
        already (a finalizer run inside our work)."""
        if inside():
            self.release_later(f, watch, slot)
            return
        with self.lock:
            self._release(f, watch)
            self._drop_vacant(slot)

    def release_later(self, f: HubFile, watch: bool, slot: Optional[object] = None) -> None:
        """For finalizers: lock-free; the thread (or the next registration) releases."""
        self.deferred.append((f, watch, slot))  # list.append: atomic, takes no lock
        self._poke()

    def defer(self, work: Callable[[], None]) -> None:
        """Have the thread call ``work()`` soon, outside every lock (lock-free)."""
        self.later.append(work)
        self._poke()

    def track(self, obj: HubFile) -> None:
        """Give ``obj`` a fresh lock after a fork (``after_fork_in_child``), registered or not."""
        with self.lock:
            self.tracked.add(obj)

    def _release(self, f: HubFile, watch: bool) -> None:
        f.refs -= 1
        if watch:
            f.watch_refs -= 1
            if f.watch_refs == 0:
                self.watches.unwatch(f)
        if f.refs == 0 and self.files.get(f.key) is f:
            del self.files[f.key]

    def _release_deferred(self) -> None:
        while self.deferred:
            f, watch, slot = self.deferred.pop()
            self._release(f, watch)
            self._drop_vacant(slot)

    def _drop_vacant(self, slot: Optional[object]) -> None:
        if slot is not None:
            self.deadlines.vacate(slot)

    def occupy(self, slot: object) -> bool:
        """One more user of a shared deadline slot (`Deadlines.occupy`): whether it was vacant
        (its deadline was cancelled: the caller plans it again). Paired with one `release` (or
        `release_later`) passing the slot."""
        with self.lock:
            return self.deadlines.occupy(slot)

    # ------------------------------------------------------------------ deadlines ----------
    def schedule(self, delay: float, fire: Callable[[], None], *, slot: Optional[object] = None) -> None:
        """Call ``fire()`` from the thread in ``delay`` seconds (never under a lock; it must not
        raise). With ``slot``, this replaces the slot's entry, if any: the heap holds at most one
        live entry per slot, however often it is rescheduled. An infinite delay only cancels."""
        if self.lock.held():  # re-entered from a finalizer inside our work: do it from the thread
            self.defer(functools.partial(self.schedule, delay, fire, slot=slot))
            return
        with self.lock:
            self._schedule(delay, fire, slot)

    def cancel(self, slot: object) -> None:
        """Drop the slot's entry, if any (it will not fire)."""
        if self.lock.held():
            self.defer(functools.partial(self.cancel, slot))
            return
        with self.lock:
            self._drop(slot)

    def _schedule(self, delay: float, fire: Callable[[], None], slot: Optional[object] = None) -> None:
        due = _mono() + max(0.0, delay) if math.isfinite(delay) else math.inf
        self.deadlines.push(due, fire, slot)
        if due < self.watcher.sleeping_until:
            self._poke()

    def _drop(self, slot: object) -> None:
        self.deadlines.cancel(slot)

    def ensure_running(self) -> None:
        """Start what this process needs (the thread; in a forked child, on its first use, also
        the inotify instance and the watches) if it is not running; cheap when it is. Never
        raises: a thread that cannot start is tried again at the next call."""
        if self.started and self.watcher.alive():
            return
        if inside():
            return
        with self.lock:
            thread = self._start()
        failure = self.watcher.start(thread)
        self._say()
        if failure is not None and "thread" not in self.watcher.warned:
            self.watcher.warned.add("thread")
            log.warning("sa-token: %s; tokens are still checked and re-read on use", failure)

    # ------------------------------------------------------------------ inotify -------------
    def watched_directories(self) -> dict[str, bool]:
        """Directories watched, and whether each watch is armed (for diagnostics and tests)."""
        with self.lock:
            return self.watches.armed()

    def stats(self) -> dict[str, int]:
        """Counters for benchmarks and tests."""
        with self.lock:
            return {
                "threads_started": self.watcher.started,
                "inotify_instances": 0 if self.watches.fd is None else 1,
                "watched_directories": len(self.watches.dirs),
                "files": len(self.files),
                "deadlines": len(self.deadlines),
                "heap_entries": self.deadlines.size,
            }

    # ------------------------------------------------------------------ the thread ---------
    def _start(self) -> Optional[threading.Thread]:
        """Under the lock: in a forked child, the first use makes the wake-up pipe, the inotify
        instance and the watches; then the thread to start (`Watcher.start`, outside the lock)."""
        if not self.started:
            self.watcher.open()
            self.started = True
            self.watches.start(any(f.watch_refs for f in self.files.values()))
            # Rotations may have happened while nobody watched: re-read everything once.
            self._schedule(0.0, functools.partial(_refresh_all, list(self.files.values())))
        return self.watcher.reserve()

    def _poke(self) -> None:
        self.watcher.poke()

    def turn(self) -> tuple[Optional[list[Callable[[], None]]], Optional[int], float, float]:
        """Under the lock, for the thread: what is due (``None`` when nothing is to do: then it
        sleeps), the inotify descriptor, how long to sleep at most, and the hub's time now."""
        self._release_deferred()
        now = _mono()
        due = self.deadlines.pop_due(now)
        next_due = self.deadlines.next_due()
        timeout = min(next_due - now, MAX_SLEEP) if next_due < math.inf else math.inf
        busy = bool(due or self.later or self.deferred)
        return (due if busy else None), self.watches.fd, timeout, now

    def refresh_files(self, files: set[HubFile]) -> None:
        """Re-read each file (on the hub's thread: what the watches found changed or re-armed)."""
        _refresh_all(list(files))

    def _on_inotify(self, fd: int) -> None:
        events = _inotify.read_events(fd)
        if not events:
            return
        with self.lock:
            changed = self.watches.changed_by(events)
        self._say()  # (a lost directory's re-arm is scheduled, nothing said)
        for f in changed:
            _refresh(f)

    # ------------------------------------------------------------------ fork ----------------
    def at_fork_in_child(self, hook: Callable[[], None]) -> None:
        """Run ``hook()`` in every forked child (for module-level locks and state)."""
        self._fork_hooks.append(hook)

    def _before_fork(self) -> None:
        self.lock.acquire()

    def _after_fork_in_parent(self) -> None:
        self.lock.release()

    def _after_fork_in_child(self) -> None:
        """Cheap and local: no inotify instance, no pipe, no thread, no read here. A child that
        never uses sa-token (a ``multiprocessing.Pool`` worker, the pre-exec child of a
        ``subprocess`` with ``preexec_fn``) costs nothing; the first use (`ensure_running`, a new
        registration) starts what the child needs and re-reads every file once."""
        self.lock.release()  # taken by _before_fork in this thread: its count of held locks too
        tracked = list(self.tracked)
        # Registrations and deadlines carry over (the deadlines whole, their numbering too).
        self.watches.forked()  # its descriptor is the parent's copy: closed, never used
        kept = (self.files, self.watches, self.deadlines, self._fork_hooks)
        self.watcher.forked()  # the pipe is the parent's copy: closed, never used
        self._init()
        self.files, self.watches, self.deadlines, self._fork_hooks = kept
        self.started = False
        for obj in tracked:
            self.tracked.add(obj)
            _call(obj.after_fork_in_child)
        for hook in self._fork_hooks:
            _call(hook)


def _call(fn: Callable[[], None]) -> None:
    HUB.watcher.call(fn)


def _refresh(f: HubFile) -> None:
    _call(f.refresh)


def _refresh_all(files: list[HubFile]) -> None:
    for f in files:
        _refresh(f)


HUB = Hub()
at_fork_in_child = HUB.at_fork_in_child

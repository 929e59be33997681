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

The inotify instance and the directory watches are `sa_token._watches` (the system calls,
`sa_token._inotify`); the deadline heap is `sa_token._deadlines`. The hub keeps the registry,
the thread and fork recovery.
"""

from __future__ import annotations

import functools
import math
import os
import select
import sys
import threading
import time
import weakref
from typing import Callable, Optional, TypeVar

from . import _clock, _fmt, _inotify
from ._deadlines import Deadlines
from ._inotify import (
    DATA_DIR,
    DirWatch,
    volume_root,
    watch_targets,
)
from ._locks import Notes, OwnedLock, inside, say
from ._log import log
from ._watches import Watches
from .errors import ThreadStartError

__all__ = ["DATA_DIR", "HUB", "Hub", "HubFile", "at_fork_in_child", "volume_root", "watch_targets"]


# After an unexpected error in the watcher thread, pause this long before going on: an error that
# repeats must not spin a core.
_ERROR_PAUSE = 0.1
# The longest sleep handed to poll(): its timeout is a C int of milliseconds (24.8 days at most),
# and a deadline further out (refresh_interval=1e9) must not overflow it. A day: no idle wake-ups
# worth counting.
MAX_SLEEP = 86400.0
_mono = _clock.mono  # the hub's clock for sleeping (CLOCK_BOOTTIME where there is one)

F = TypeVar("F", bound="HubFile")


class HubFile:
    """What the hub watches: one file, shared by everyone using that path.

    Subclasses implement `refresh` (re-read now; must never raise). ``refs`` and
    ``watch_refs`` (how many users, and how many of them want inotify) belong to the hub and
    change only under its lock."""

    def __init__(self, key: str, path: str) -> None:
        self.key = key
        self.path = path
        self.lock = OwnedLock()
        self.refs = 0
        self.watch_refs = 0
        self.dirs: list[DirWatch] = []

    def refresh(self) -> None:
        raise NotImplementedError

    @property
    def watching(self) -> bool:
        """Whether inotify watches every directory this file needs (else the timer covers it)."""
        dirs = self.dirs
        return bool(dirs) and all(d.wd is not None for d in dirs)

    def after_fork_in_child(self) -> None:
        """In a forked child, at the fork: only cheap, local work (no thread, no descriptor)."""
        self.lock = OwnedLock()


class Hub:
    """The registry of watched files and directories, the deadline heap, and the one thread."""

    def __init__(self) -> None:
        self._fork_hooks: list[Callable[[], None]] = []
        self.wake_r: Optional[int] = None  # the wake-up pipe (made when the thread starts, in a child)
        self.wake_w: Optional[int] = None
        self._init()
        self.wake_r, self.wake_w = _pipe()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(
                before=self._before_fork,
                after_in_parent=self._after_fork_in_parent,
                after_in_child=self._after_fork_in_child,
            )

    def _init(self) -> None:
        self.lock = OwnedLock()
        self.notes = Notes()  # what to log once the lock is released (`_say`)
        self.files: dict[str, HubFile] = {}
        self.tracked: weakref.WeakSet[HubFile] = weakref.WeakSet()  # every lock holder, for fork
        self.watches = Watches(self)  # the inotify instance and the directory watches
        self.deadlines = Deadlines()  # on the hub's clock (`_mono`); carried over a fork whole
        # Work queued without the lock (finalizers, a close() re-entered under our own lock):
        # releases (file, watch, deadline slot), done under the lock by the next registration or
        # the thread; and calls, made by the thread outside the lock.
        self.deferred: list[tuple[HubFile, bool, Optional[object]]] = []
        self.later: list[Callable[[], None]] = []
        self.warned: set[str] = set()
        self.wake_r = self.wake_w = None
        self.started = True  # False in a forked child until its first use
        self.thread: Optional[threading.Thread] = None
        self.starting: set[threading.Thread] = set()  # made under the lock, started outside it
        self.threads_started = 0
        self.sleeping_until = -math.inf  # -inf while the thread is awake (it rescans before sleeping)

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
        failure = self._run_thread(thread)
        if failure is not None:
            self.release(f, watch=watch)
        self._say()
        if failure is not None:
            raise failure
        return f  # type: ignore[return-value]

    def release(self, f: HubFile, *, watch: bool, slot: Optional[object] = None) -> None:
        """One user less (and its deadline ``slot`` cancelled, once the slot is vacant: see
        `_drop_vacant`). Deferred, not waited for, when the calling thread holds a library lock
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
        """A released user's deadline slot: cancelled, or one user less if it is shared
        (`occupy`), and cancelled once none is left."""
        if slot is None:
            return
        users: Optional[int] = getattr(slot, "users", None)
        if users is not None:
            users = slot.users = max(0, users - 1)  # type: ignore[attr-defined]
        if not users:
            self._drop(slot)

    def occupy(self, slot: object) -> bool:
        """One more user of a deadline slot shared by several (an object with a ``users``
        count, guarded by this lock: a `sa_token._tokenfile.FileView`). Returns whether it was
        vacant: its deadline was cancelled then, and the caller plans it again. Each `occupy`
        is paired with one `release` (or `release_later`) passing the slot."""
        with self.lock:
            slot.users += 1  # type: ignore[attr-defined]
            return slot.users == 1  # type: ignore[attr-defined, no-any-return]

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
        if slot is not None and getattr(slot, "users", 1) == 0:
            delay = math.inf  # a shared slot nobody uses: only cancel (`occupy` plans it again)
        due = _mono() + max(0.0, delay) if math.isfinite(delay) else math.inf
        self.deadlines.push(due, fire, slot)
        if due < self.sleeping_until:
            self._poke()

    def _drop(self, slot: object) -> None:
        self.deadlines.cancel(slot)

    def ensure_running(self) -> None:
        """Start what this process needs (the thread; in a forked child, on its first use, also
        the inotify instance and the watches) if it is not running; cheap when it is. Never
        raises: a thread that cannot start is tried again at the next call."""
        t = self.thread
        if self.started and t is not None and t.is_alive():
            return
        if inside():
            return
        with self.lock:
            thread = self._start()
        failure = self._run_thread(thread)
        self._say()
        if failure is not None and "thread" not in self.warned:
            self.warned.add("thread")
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
                "threads_started": self.threads_started,
                "inotify_instances": 0 if self.watches.fd is None else 1,
                "watched_directories": len(self.watches.dirs),
                "files": len(self.files),
                "deadlines": len(self.deadlines),
                "heap_entries": self.deadlines.size,
            }

    # ------------------------------------------------------------------ the thread ---------
    def _start(self) -> Optional[threading.Thread]:
        """Under the lock: in a forked child, the first use makes the wake-up pipe, the inotify
        instance and the watches; then the thread to start (`_run_thread`, outside the lock: a
        thread's start runs code, the garbage collector's too, while the starter waits)."""
        if not self.started:
            self.wake_r, self.wake_w = _pipe()
            self.started = True
            self.watches.start(any(f.watch_refs for f in self.files.values()))
            # Rotations may have happened while nobody watched: re-read everything once.
            self._schedule(0.0, functools.partial(_refresh_all, list(self.files.values())))
        if self.thread is not None and (self.thread.is_alive() or self.thread in self.starting):
            return None
        if sys.is_finalizing():  # interpreter shutdown: a thread started now never runs
            return None
        thread = self.thread = threading.Thread(target=self._run, name="sa-token-watcher", daemon=True)
        self.starting.add(thread)  # it runs while self.thread is itself: set before it starts
        return thread

    def _run_thread(self, thread: Optional[threading.Thread]) -> Optional[ThreadStartError]:
        """Start ``thread`` (outside the lock). Returns the error if it cannot start (nothing is
        remembered: the next call tries again)."""
        if thread is None:
            return None
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": a pids or RLIMIT_NPROC limit
            with self.lock:
                self.starting.discard(thread)
                if self.thread is thread:
                    self.thread = None
            return ThreadStartError(
                f"sa-token cannot start its watcher thread ({_fmt.text(exc)}): the container's pids "
                "limit or this user's process limit (ulimit -u, RLIMIT_NPROC) is reached; it is tried "
                "again at the next use",
                reason="thread-unavailable",
            )
        with self.lock:
            self.starting.discard(thread)
            self.threads_started += 1
        return None

    def _poke(self) -> None:
        fd = self.wake_w
        if fd is None:
            return  # a forked child that has not started: nothing to wake
        try:
            os.write(fd, b"!")
        except OSError:  # the pipe is full: the thread wakes anyway
            pass

    def _run(self) -> None:
        me = threading.current_thread()
        poller = select.poll()
        polled: set[int] = set()
        while self.thread is me:
            try:
                polled = self._step(me, poller, polled)
            except BaseException as exc:  # never die: a dead thread would only delay pickups
                self.report(exc)
                time.sleep(_ERROR_PAUSE)

    def report(self, exc: BaseException) -> None:
        """Log what the thread caught, once per kind of exception (never under a lock)."""
        kind = type(exc).__name__
        if kind not in self.warned:
            self.warned.add(kind)
            log.warning("sa-token: the watcher thread caught %s: %s", kind, _fmt.text(exc))

    def _step(self, me: threading.Thread, poller: select.poll, polled: set[int]) -> set[int]:
        """One turn: run what is due, or sleep until the next deadline or event and handle it."""
        while self.later:
            _call(self.later.pop(0))
        with self.lock:
            turn = self._turn() if self.thread is me else None
        self._say()
        if turn is None:
            return polled
        due, fds, timeout = turn
        if due is not None:
            for fire in due:
                _call(fire)
            return polled
        for fd in fds - polled:
            poller.register(fd, select.POLLIN)
        for fd in polled - fds:
            poller.unregister(fd)
        ready = poller.poll(None if timeout == math.inf else math.ceil(timeout * 1000))
        with self.lock:
            self.sleeping_until = -math.inf
        for fd, _ in ready:
            if fd == self.watches.fd:
                self._on_inotify(fd)
            elif fd == self.wake_r:
                _drain(fd)
        return fds

    def _turn(self) -> tuple[Optional[list[Callable[[], None]]], set[int], float]:
        """Under the lock: what is due (``None`` when nothing is to do: then sleep), the
        descriptors to poll and how long to sleep."""
        self._release_deferred()
        now = _mono()
        due = self.deadlines.pop_due(now)
        wake_r = self.wake_r
        assert wake_r is not None  # the thread runs only once started
        inotify_fd = self.watches.fd
        fds = {wake_r} if inotify_fd is None else {wake_r, inotify_fd}
        next_due = self.deadlines.next_due()
        timeout = min(next_due - now, MAX_SLEEP) if next_due < math.inf else math.inf
        busy = bool(due or self.later or self.deferred)
        self.sleeping_until = -math.inf if busy else now + timeout
        return (due if busy else None), fds, timeout

    def _on_inotify(self, fd: int) -> None:
        events = _inotify.read_events(fd)
        if not events:
            return
        with self.lock:
            changed = self.watches.changed_by(events)
        self._say()  # (a lost directory's re-arm is scheduled, nothing said)
        for f in changed:
            _refresh(f)

    def refresh_under(self, directory: str) -> None:
        """Re-read now every registered file under ``directory`` that its users want watched but
        no inotify watch covers: for the test kit, whose writes must be seen at once on a
        platform (or in a process) without inotify, as inotify would make them seen."""
        prefix = os.path.abspath(directory) + os.sep
        if inside():
            return
        with self.lock:
            files = [
                f
                for f in self.files.values()
                if f.path.startswith(prefix) and f.watch_refs and not f.watching
            ]
        for f in files:
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
        for fd in (self.wake_r, self.wake_w):  # ours are copies: close, never use
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._init()
        self.files, self.watches, self.deadlines, self._fork_hooks = kept
        self.started = False
        for obj in tracked:
            self.tracked.add(obj)
            _call(obj.after_fork_in_child)
        for hook in self._fork_hooks:
            _call(hook)


def _pipe() -> tuple[int, int]:
    r, w = os.pipe()
    for fd in (r, w):
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
    return r, w


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except OSError:  # EAGAIN: empty
        pass


def _call(fn: Callable[[], None]) -> None:
    """Run one piece of the thread's work; whatever it raises (a bug: refreshes never raise) is
    logged, once per kind, and contained: the other files of the same batch still get theirs."""
    try:
        fn()
    except BaseException as exc:  # SystemExit too: nothing may end the watcher thread
        HUB.report(exc)


def _refresh(f: HubFile) -> None:
    _call(f.refresh)


def _refresh_all(files: list[HubFile]) -> None:
    for f in files:
        _refresh(f)


HUB = Hub()
at_fork_in_child = HUB.at_fork_in_child

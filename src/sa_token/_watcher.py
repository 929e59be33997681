"""The hub's one thread, ``sa-token-watcher``: it sleeps in ``poll()`` on the inotify
descriptor and a wake-up pipe, with the time to the earliest deadline as its timeout; runs what
is due; and hands what inotify reports to the hub. When nothing is due it makes no wake-ups.

Starting it is two steps: `Watcher.reserve` under the hub's lock (the thread object, so that two
callers never start two), `Watcher.start` outside it (a thread's start runs code, the garbage
collector's too, while the starter waits). A thread that cannot start is reported and tried
again at the next use, never remembered. Nothing it runs may end it: what a callback raises is
logged once per kind, and the loop goes on.
"""

from __future__ import annotations

import math
import os
import select
import sys
import threading
import time
from typing import TYPE_CHECKING, Callable, Optional

from . import _fmt
from ._log import log
from .errors import ThreadStartError

if TYPE_CHECKING:
    from ._hubfile import HubCore

__all__ = ["Watcher"]

# After an unexpected error in the watcher thread, pause this long before going on: an error that
# repeats must not spin a core.
_ERROR_PAUSE = 0.1


class Watcher:
    """The thread, its wake-up pipe and what it has reported."""

    def __init__(self, hub: HubCore) -> None:
        self.hub = hub
        self.wake_r: Optional[int] = None  # the wake-up pipe (made when the thread may start)
        self.wake_w: Optional[int] = None
        self._reset()

    def _reset(self) -> None:
        self.thread: Optional[threading.Thread] = None
        self.starting: set[threading.Thread] = set()  # made under the lock, started outside it
        self.started = 0  # threads started, for the benchmarks and tests
        self.sleeping_until = -math.inf  # -inf while the thread is awake (it rescans before sleeping)
        self.warned: set[str] = set()  # kinds of errors reported (once each)

    def open(self) -> None:
        r, w = os.pipe()
        for fd in (r, w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        self.wake_r, self.wake_w = r, w

    def forked(self) -> None:
        """In a forked child, at the fork: the pipe is the parent's copy (closed, never used),
        the thread is gone; nothing starts until the child's first use."""
        for fd in (self.wake_r, self.wake_w):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.wake_r = self.wake_w = None
        self._reset()

    def alive(self) -> bool:
        t = self.thread
        return t is not None and t.is_alive()

    def reserve(self) -> Optional[threading.Thread]:
        """Under the hub's lock: the thread to start, or ``None`` if one runs or is starting."""
        if self.thread is not None and (self.thread.is_alive() or self.thread in self.starting):
            return None
        if sys.is_finalizing():  # interpreter shutdown: a thread started now never runs
            return None
        thread = self.thread = threading.Thread(target=self._run, name="sa-token-watcher", daemon=True)
        self.starting.add(thread)  # it runs while self.thread is itself: set before it starts
        return thread

    def start(self, thread: Optional[threading.Thread]) -> Optional[ThreadStartError]:
        """Start a reserved ``thread`` (outside the lock). Returns the error if it cannot start
        (nothing is remembered: the next call tries again)."""
        if thread is None:
            return None
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": a pids or RLIMIT_NPROC limit
            with self.hub.lock:
                self.starting.discard(thread)
                if self.thread is thread:
                    self.thread = None
            return ThreadStartError(
                f"sa-token cannot start its watcher thread ({_fmt.text(exc)}): the container's pids "
                "limit or this user's process limit (ulimit -u, RLIMIT_NPROC) is reached; it is tried "
                "again at the next use",
                reason="thread-unavailable",
            )
        with self.hub.lock:
            self.starting.discard(thread)
            self.started += 1
        return None

    def poke(self) -> None:
        """Wake the thread (lock-free): it looks at the heap and the queues again."""
        fd = self.wake_w
        if fd is None:
            return  # a forked child that has not started: nothing to wake
        try:
            os.write(fd, b"!")
        except OSError:  # the pipe is full: the thread wakes anyway
            pass

    def report(self, exc: BaseException) -> None:
        """Log what the thread caught, once per kind of exception (never under a lock)."""
        kind = type(exc).__name__
        if kind not in self.warned:
            self.warned.add(kind)
            log.warning("sa-token: the watcher thread caught %s: %s", kind, _fmt.text(exc))

    def call(self, fn: Callable[[], None]) -> None:
        """Run one piece of the thread's work; whatever it raises (a bug: refreshes never raise)
        is logged, once per kind, and contained: the other files of the same batch get theirs."""
        try:
            fn()
        except BaseException as exc:  # SystemExit too: nothing may end the watcher thread
            self.report(exc)

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

    def _step(self, me: threading.Thread, poller: select.poll, polled: set[int]) -> set[int]:
        """One turn: run what is due, or sleep until the next deadline or event and handle it."""
        hub = self.hub
        while hub.later:  # the calls queued with `Hub.defer`, outside every lock
            self.call(hub.later.pop(0))
        with hub.lock:
            turn = hub.turn() if self.thread is me else None
            if turn is not None:
                due, _, timeout, now = turn
                self.sleeping_until = -math.inf if due is not None else now + timeout
        hub._say()
        if turn is None:
            return polled
        due, inotify_fd, timeout, _ = turn
        if due is not None:
            for fire in due:
                self.call(fire)
            return polled
        return self._sleep(poller, polled, inotify_fd, timeout)

    def _sleep(
        self, poller: select.poll, polled: set[int], inotify_fd: Optional[int], timeout: float
    ) -> set[int]:
        """Wait for an event, a poke or the timeout; hand inotify's events to the hub."""
        hub = self.hub
        wake_r = self.wake_r
        assert wake_r is not None  # the thread runs only once started
        fds = {wake_r} if inotify_fd is None else {wake_r, inotify_fd}
        for fd in fds - polled:
            poller.register(fd, select.POLLIN)
        for fd in polled - fds:
            poller.unregister(fd)
        ready = poller.poll(None if timeout == math.inf else math.ceil(timeout * 1000))
        with hub.lock:
            self.sleeping_until = -math.inf
        for fd, _ in ready:
            if fd == inotify_fd:
                hub._on_inotify(fd)
            elif fd == wake_r:
                _drain(fd)
        return fds


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except OSError:  # EAGAIN: empty
        pass

"""Callbacks told about each new value, in order, never on the watcher thread.

A callback may do anything: a network call, a slow log handler, ``sys.exit()``. None of that
may delay the watcher thread (which picks up rotations for every source in the process) or
another source's callbacks. So each `Subscribers` delivers from a thread of its own, started
when there is something to deliver and gone when there is not; values are delivered in the
order they came, and whatever a callback raises (`SystemExit` included) is logged and
contained. A thread that cannot start (a pids limit) is retried with backoff, from the watcher
thread: delivery resumes once one can; nothing is remembered for good. Unsubscribing takes no
lock at all (it may run from a finalizer the garbage collector runs inside our own locked
section): it switches the subscription off, and the list drops it at its next change.
"""

from __future__ import annotations

import collections
import threading
from typing import Callable, Generic, Optional, TypeVar

from ._locks import OwnedLock, inside
from ._log import log

__all__ = ["Subscribers"]


T = TypeVar("T")

# A delivery thread that could not start is tried again after this long, doubling up to the cap:
# a pids limit is usually momentary (a burst of threads elsewhere in the container).
RETRY_FIRST = 0.5
RETRY_MAX = 30.0


class _Subscription(Generic[T]):
    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[T], None]) -> None:
        # None once unsubscribed: one attribute store, no lock needed, the callback let go at once
        self.callback: Optional[Callable[[T], None]] = callback


class Subscribers(Generic[T]):
    """A copy-on-write list of callbacks and the queue of values still to deliver to them."""

    def __init__(self, owner: str) -> None:
        self._owner = owner  # for log lines: the file the values come from
        self._lock = OwnedLock()
        self._subs: tuple[_Subscription[T], ...] = ()  # copy-on-write
        self._pending: collections.deque[T] = collections.deque()
        self._worker: Optional[threading.Thread] = None
        self._retry = RETRY_FIRST  # the next delay after a failed thread start
        self._retrying = False  # a retry is scheduled

    def add(self, callback: Callable[[T], None]) -> Callable[[], None]:
        """Subscribe; returns a function that unsubscribes (idempotent)."""
        sub = _Subscription(callback)
        with self._lock:
            self._subs = (*(s for s in self._subs if s.callback is not None), sub)

        def unsubscribe() -> None:
            sub.callback = None

        return unsubscribe

    def notify(self, value: T) -> None:
        """Queue ``value`` for the callbacks (returns at once; never raises)."""
        if all(sub.callback is None for sub in self._subs):
            return
        if inside():  # a finalizer inside our own locked work: the deque is thread-safe
            self._pending.append(value)
            return
        with self._lock:
            self._pending.append(value)
            worker = self._reserve()
        self._start(worker)

    def _reserve(self) -> Optional[threading.Thread]:  # under the lock
        if self._worker is not None or self._retrying:
            return None
        name = f"sa-token-subscribers {self._owner}"
        worker = self._worker = threading.Thread(target=self._deliver, name=name, daemon=True)
        return worker

    def _start(self, worker: Optional[threading.Thread]) -> None:
        """Outside the lock: a thread's start runs code (the garbage collector may strike in the
        new thread) while the starter waits for it, so never under a lock of ours."""
        if worker is None:
            return
        try:
            worker.start()
        except RuntimeError as exc:  # "can't start new thread": a pids or RLIMIT_NPROC limit
            with self._lock:
                self._worker = None
                self._retrying = True
            self._failed(exc)
            return
        self._retry = RETRY_FIRST

    def _failed(self, exc: RuntimeError) -> None:
        """Outside the lock: say so (once per outage) and try again later from the watcher."""
        from ._hub import HUB  # here: the hub sits above this module

        delay, self._retry = self._retry, min(self._retry * 2, RETRY_MAX)
        if delay == RETRY_FIRST:
            log.warning(
                "sa-token: cannot start the thread that calls the subscribers of %s (%s); retrying "
                "(with backoff): the values wait, in order",
                self._owner,
                exc,
            )
        HUB.schedule(delay, self._resume)

    def _resume(self) -> None:
        with self._lock:
            self._retrying = False
            worker = self._reserve() if self._pending else None
        self._start(worker)

    def _deliver(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._worker = None
                    return
                value = self._pending.popleft()
                subs = self._subs
            for sub in subs:
                callback = sub.callback
                if callback is None:  # unsubscribed meanwhile
                    continue
                try:
                    callback(value)
                except BaseException:  # SystemExit and KeyboardInterrupt too: contain, report
                    log.exception("sa-token: subscriber %r of %s raised", callback, self._owner)

    def after_fork_in_child(self) -> None:
        """The delivering thread is gone and the lock may have been held by it. Values still
        pending are delivered by the next notification's thread (none is started at the fork)."""
        self._lock = OwnedLock()
        self._worker = None
        self._retrying = False

"""Callbacks told about each new value, in order, never on the watcher thread.

A callback may do anything: a network call, a slow log handler, ``sys.exit()``. None of that
may delay the watcher thread (which picks up rotations for every source in the process) or
another source's callbacks. So each `Subscribers` delivers from a thread of its own, started
when there is something to deliver and gone when there is not; values are delivered in the
order they came, and whatever a callback raises (`SystemExit` included) is logged and
contained.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Callable, Generic, Optional, TypeVar

__all__ = ["Subscribers"]

log = logging.getLogger("sa_token")

T = TypeVar("T")


class Subscribers(Generic[T]):
    """A copy-on-write list of callbacks and the queue of values still to deliver to them."""

    def __init__(self, owner: str) -> None:
        self._owner = owner  # for log lines: the file the values come from
        self._lock = threading.Lock()
        self._callbacks: tuple[Callable[[T], None], ...] = ()
        self._pending: collections.deque[T] = collections.deque()
        self._worker: Optional[threading.Thread] = None

    def add(self, callback: Callable[[T], None]) -> Callable[[], None]:
        """Subscribe; returns a function that unsubscribes (idempotent)."""
        with self._lock:
            self._callbacks = (*self._callbacks, callback)

        def unsubscribe() -> None:
            with self._lock:
                callbacks = list(self._callbacks)
                if callback in callbacks:
                    callbacks.remove(callback)
                self._callbacks = tuple(callbacks)

        return unsubscribe

    def notify(self, value: T) -> None:
        """Queue ``value`` for the callbacks (returns at once)."""
        if not self._callbacks:
            return
        with self._lock:
            self._pending.append(value)
            self._start()

    def _start(self) -> None:  # under the lock
        if self._worker is None:
            self._worker = threading.Thread(
                target=self._deliver, name=f"sa-token-subscribers {self._owner}", daemon=True
            )
            self._worker.start()

    def _deliver(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._worker = None
                    return
                value = self._pending.popleft()
                callbacks = self._callbacks
            for callback in callbacks:
                try:
                    callback(value)
                except BaseException:  # SystemExit and KeyboardInterrupt too: contain, report
                    log.exception("sa-token: subscriber %r of %s raised", callback, self._owner)

    def after_fork_in_child(self) -> None:
        """The delivering thread is gone and the lock may have been held by it."""
        self._lock = threading.Lock()
        self._worker = None
        if self._pending:
            self._start()

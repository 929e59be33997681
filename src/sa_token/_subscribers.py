"""A copy-on-write list of callbacks, shared by TokenSource and CABundle."""

from __future__ import annotations

import logging
import threading
from typing import Callable, Generic, TypeVar

__all__ = ["Subscribers"]

log = logging.getLogger("sa_token")

T = TypeVar("T")


class Subscribers(Generic[T]):
    """Callbacks called with each new value; ``notify`` iterates a snapshot without a lock and
    logs (never propagates) what a callback raises."""

    def __init__(self, owner: str) -> None:
        self._owner = owner  # for log lines: the file the values come from
        self._lock = threading.Lock()
        self._callbacks: tuple[Callable[[T], None], ...] = ()

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
        for callback in self._callbacks:
            try:
                callback(value)
            except Exception:
                log.exception("sa-token: subscriber %r of %s raised", callback, self._owner)

    def after_fork(self) -> None:
        self._lock = threading.Lock()  # it may have been held by a thread that is gone

"""The library's locks, and what may (not) happen while one is held.

Two rules hold for every lock sa-token takes (docs/model.md, "User code and locks"):

* **No user code runs while a library lock is held**: no logging call (a handler is user code:
  it may call back into sa-token), no subscriber callback, no injected clock. What a locked
  section has to say is collected in [`Notes`][sa_token._locks.Notes] and said once the lock
  is released.
* **A thread never waits for a lock it holds itself.** The garbage collector runs finalizers
  (``__del__``, ``weakref.finalize``) wherever it strikes, also inside our locked sections; a
  finalizer that calls ``close()`` then meets a lock its own thread holds. `OwnedLock` knows
  its holder, so such a call defers its work (the watcher thread does it) instead of waiting.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

__all__ = ["Notes", "OwnedLock", "inside"]

log = logging.getLogger("sa_token")

_get_ident = threading.get_ident
_held = threading.local()  # how many counted library locks this thread holds


def inside() -> bool:
    """Whether this thread holds a library lock now (then it is inside our own work, e.g. a
    finalizer the garbage collector ran there): it must start nothing that takes another lock,
    or two threads could wait for each other (the hub's lock against a file's)."""
    return getattr(_held, "n", 0) > 0


class OwnedLock:
    """A ``threading.Lock`` that knows which thread holds it (`held`)."""

    __slots__ = ("_counted", "_lock", "_owner")

    def __init__(self, *, counted: bool = True) -> None:
        self._lock = threading.Lock()
        self._owner = 0
        self._counted = counted  # counts for `inside` (not a lock held across calls back into us)

    def acquire(self) -> None:
        me = _get_ident()  # before taking the lock: nothing may allocate between the two
        self._lock.acquire()
        self._owner = me
        if self._counted:
            _held.n = getattr(_held, "n", 0) + 1

    def release(self) -> None:
        if self._counted:
            _held.n -= 1
        self._owner = 0
        self._lock.release()

    def __enter__(self) -> OwnedLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def held(self) -> bool:
        """Whether the calling thread holds the lock (then it must not wait for it)."""
        return self._owner == _get_ident()

    def locked(self) -> bool:
        return self._lock.locked()


class Notes:
    """Log lines collected inside a locked section, said after the lock is released."""

    __slots__ = ("_lines",)

    def __init__(self) -> None:
        self._lines: list[tuple[int, str, tuple[Any, ...]]] = []

    def add(self, level: int, message: str, *args: Any) -> None:
        self._lines.append((level, message, args))

    def __bool__(self) -> bool:
        return bool(self._lines)

    def take(self) -> list[tuple[int, str, tuple[Any, ...]]]:
        """The lines collected so far (call it under the lock that guards this object)."""
        lines, self._lines = self._lines, []
        return lines

    def say(self) -> None:
        """Log what was collected (for notes private to one thread: no lock involved)."""
        say(self.take())


def say(lines: list[tuple[int, str, tuple[Any, ...]]]) -> None:
    """Log ``lines`` on the ``sa_token`` logger (never call it under a library lock)."""
    for level, message, args in lines:
        log.log(level, message, *args)

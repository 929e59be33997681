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
* **Nothing waits for a lock while the interpreter shuts down.** Daemon threads (ours, and the
  application's) are frozen wherever they are, perhaps holding a lock that is then never
  released, while the last collections run finalizers: there, `inside` is true (entry points
  take their lock-free paths) and `OwnedLock.acquire` takes a lock only if it is free.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from ._log import log

__all__ = ["Notes", "OwnedLock", "inside"]


_finalizing = sys.is_finalizing  # bound now: at shutdown the sys module may be half torn down
_held = threading.local()  # per thread: ``locks``, the library locks it holds or is taking


def _mine() -> list[OwnedLock]:
    try:
        mine: list[OwnedLock] = _held.locks
    except AttributeError:
        mine = _held.locks = []
    return mine


def inside() -> bool:
    """Whether this thread holds a library lock now (then it is inside our own work, e.g. a
    finalizer the garbage collector ran there): it must start nothing that takes another lock,
    or two threads could wait for each other (the hub's lock against a file's). True while the
    interpreter shuts down, too: a lock may then be held by a thread that will never run again."""
    return _finalizing() or any(lock._counted for lock in _mine())


class OwnedLock:
    """A ``threading.Lock`` that knows whether the calling thread holds it (`held`).

    A thread is marked as holding the lock *before* it takes it and unmarked only *after* it
    let go: the garbage collector may strike between any two bytecodes (at the next allocation
    before Python 3.12, at the next check of the eval breaker since), also right after the
    underlying lock was taken; a finalizer run there must already see the lock as its own."""

    __slots__ = ("_counted", "_lock")

    def __init__(self, *, counted: bool = True) -> None:
        self._lock = threading.Lock()
        self._counted = counted  # counts for `inside` (not a lock held across calls back into us)

    def acquire(self) -> None:
        _mine().append(self)
        try:
            taken = self._lock.acquire(not _finalizing())  # at shutdown, only if it is free
        except BaseException:  # interrupted while waiting (KeyboardInterrupt): not taken
            self._unmark()
            raise
        if not taken:
            self._unmark()
            raise RuntimeError(
                "sa-token: the interpreter is shutting down and a lock of sa-token is held by a "
                "thread that will not run again: not waiting for it"
            )

    def release(self) -> None:
        self._lock.release()
        self._unmark()

    def _unmark(self) -> None:
        mine = _mine()
        for i in range(len(mine) - 1, -1, -1):  # usually the last one: locks nest
            if mine[i] is self:
                del mine[i]
                return

    def __enter__(self) -> OwnedLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def held(self) -> bool:
        """Whether the calling thread holds the lock, or is taking or releasing it (then it must
        not wait for it). True while the interpreter shuts down (see the module's notes)."""
        return _finalizing() or any(lock is self for lock in _mine())

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

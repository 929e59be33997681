"""A lease keeper's place on the hub and in the process: its entry on the deadline heap (the
`_Slot` is the slot), the short-lived worker thread started when that entry is due (a login is a
network call: never on the hub's thread), its subscription to the source's rotations, and the
at-fork handler of every keeper. The keeper itself is
`sa_token._lease`; this holds it weakly, so a keeper dropped without ``close()`` is collected."""

from __future__ import annotations

import functools
import threading
import weakref
from typing import TYPE_CHECKING, Callable, Optional, Protocol

from ._hub import HUB, at_fork_in_child
from ._log import log

if TYPE_CHECKING:
    from ._lease_report import Report
    from ._token import Token


class Kept(Protocol):
    """What the slot uses of its keeper (`sa_token._lease.LeaseKeeper`)."""

    @property
    def name(self) -> str: ...

    @property
    def _phase(self) -> str: ...

    @property
    def _report(self) -> Report: ...

    def step(self) -> float: ...

    def rotated(self, tok: Token) -> None: ...

    def _arm(self, delay: Optional[float] = None) -> None: ...

    def _after_fork(self) -> None: ...


__all__ = ["THREAD_RETRY_FIRST", "THREAD_RETRY_MAX", "_Slot", "keepers"]

# A worker thread that cannot start (a pids limit) is tried again after this long, doubling up
# to the cap: such limits are usually momentary.
THREAD_RETRY_FIRST = 0.5
THREAD_RETRY_MAX = 30.0


class _Slot:
    """A keeper's place on the hub: its entry on the deadline heap (this object is the slot),
    the worker thread started when the entry is due, and the keeper's subscription to its
    source. Holds the keeper weakly: a keeper dropped without close() is collected."""

    __slots__ = ("keeper", "unsubscribe")

    def __init__(self, keeper: Kept) -> None:
        self.keeper = weakref.ref(keeper)
        self.unsubscribe: Callable[[], None] = _nothing

    def arm(self, delay: float) -> None:
        """Put the next action on the hub's deadline heap (replacing the one planned); the hub
        starts a worker thread for it when it is due (`fire`): no thread while idle."""
        HUB.schedule(delay, functools.partial(self.fire, THREAD_RETRY_FIRST), slot=self)
        HUB.ensure_running()  # cheap when it runs; in a forked child, the first use starts it

    def fire(self, retry: float) -> None:
        """On the hub's thread, when the keeper's next action is due: start a worker thread for
        it (a login is a network call: never on the hub's thread). One that cannot start is
        tried again with backoff."""
        keeper = self.keeper()
        if keeper is None or keeper._phase != "running":
            return  # closed, collected, or a forked child's inherited deadline
        worker = threading.Thread(target=self._work_once, name="sa-token-lease", daemon=True)
        try:
            worker.start()
        except RuntimeError as exc:  # "can't start new thread": a pids or RLIMIT_NPROC limit
            keeper._report.thread_failed(exc)
            HUB.schedule(retry, functools.partial(self.fire, min(retry * 2, THREAD_RETRY_MAX)), slot=self)

    def _work_once(self) -> None:
        keeper = self.keeper()
        if keeper is None:
            return
        try:
            keeper.step()
        except Exception:  # pragma: no cover - a bug; the next deadline tries again
            log.exception("sa-token: %s: unexpected error", keeper.name)
        keeper._arm()

    def rotated(self, tok: Token) -> None:
        keeper = self.keeper()
        if keeper is not None:
            keeper.rotated(tok)

    def dropped(self) -> None:
        """The keeper was collected without close(): let go of its deadline and its
        subscription (both safe from a finalizer: the hub defers when its lock is held,
        unsubscribing takes no lock)."""
        HUB.cancel(self)
        self.unsubscribe()


def _nothing() -> None:
    pass


class _Keepers:
    """Every live keeper of the process, for the at-fork handler (a weak set under a lock that
    a forked child replaces)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.all: weakref.WeakSet[Kept] = weakref.WeakSet()

    def add(self, keeper: Kept) -> None:
        with self.lock:
            self.all.add(keeper)

    def discard(self, keeper: Kept) -> None:
        with self.lock:
            self.all.discard(keeper)


keepers = _Keepers()


def _after_fork_in_child() -> None:
    """The one at-fork handler of exchanged credentials.

    Decision: a child does not share the parent's credential beyond a grace period. A Vault
    token used by several processes is legal, but one process's `revoke_on_close` (or a renewal
    that Vault refuses and so revokes the token) would cut off all the others, and every
    process would renew the same token. So each child keeps the parent's credential only as a
    fallback (readers use it at once, nothing waits), never renews or revokes it, and logs in for
    its own in the background, from the child's first use of the keeper: a child that never
    uses it (a pool worker, the pre-exec child of ``subprocess(preexec_fn=...)``) makes no login
    whose token nobody would revoke. Locks the parent's threads may have held are replaced.
    """
    keepers.lock = threading.Lock()
    for keeper in list(keepers.all):
        keeper._after_fork()


# Part of the process's one at-fork handler: it runs after the hub has given every token file
# and source a fresh lock.
at_fork_in_child(_after_fork_in_child)

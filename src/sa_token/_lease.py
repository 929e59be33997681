"""Keep a credential obtained by exchanging the projected token valid: the flow every exchange shares.

An *exchange* (Vault's Kubernetes or JWT auth method, a cloud STS) turns the projected token
into a credential with a lifetime (`Authenticator.login`), and may extend it (`Authenticator.renew`).
[`LeaseKeeper`][sa_token._lease.LeaseKeeper] decides when to do which (the rules are pure
functions in `sa_token._lease_plan`), from the hub's deadline heap and a short-lived worker
thread (no thread of its own while idle), so that readers never wait for a renewal. It never
sends an expired projected token (it waits for the kubelet's rotation, and says so once), keeps
the current credential while it is valid whatever fails, and raises a typed error only once no
valid credential exists; readers then log in themselves, one at a time (single flight: 32
threads asking at once cause one login), no more often than the backoff allows. The rules
(renewal point, re-login, backoff, the spread after a rotation) are `sa_token._lease_plan`'s.
Its place on the hub (deadline, worker, subscription, fork) is `sa_token._lease_slot`.

The keeper is the readers' side and the lifecycle; its schedule and the work (the plan, its
two locks, the login and renewal attempts) are `sa_token._lease_engine.Engine`'s. Time is the
wall clock read through `sa_token._clock` at each call (freezegun works), or an injected
``clock``.
"""

from __future__ import annotations

import copy
import random
import weakref
from typing import Callable, Generic, Optional, TypeVar

from . import _fmt
from ._hub import HUB
from ._lease_engine import Engine
from ._lease_plan import (
    BACKOFF_MAX,
    GRACE_RANGE,
    RENEW_FRACTION,
    Authenticator,
    Config,
    Grant,
    KeeperSource,
    Lease,
    Plan,
    Rotated,
)
from ._lease_report import Report
from ._lease_slot import _Slot, keepers
from ._locks import OwnedLock, inside, say
from ._token import Token
from .errors import ExchangeError

__all__ = ["GRACE_RANGE", "RENEW_FRACTION", "Authenticator", "ExchangeError", "Grant", "Lease", "LeaseKeeper"]


C = TypeVar("C")

# The keeper looks at the wall clock at least this often, even with nothing due: the hub's
# sleeps are on the boot-time clock, the lease's times on the wall clock, which can jump.
MAX_SLEEP = 60.0


class LeaseKeeper(Generic[C]):
    """Keeps one credential from ``exchange`` valid, from ``source``'s projected tokens.

    Args:
        source: the [`TokenSource`][sa_token.TokenSource] of the projected token.
        exchange: the integration's calls.
        name: what the credential is, for log lines and errors (no secret).
        renewal_needs_login_token: renewal fails once the login-time projected token expired:
            log in again after each rotation.
        clock: a `time.time`-like function (default: `time.time`, read at each call).
        rng: the random source of the jitter (tests and simulations pass a seeded one).
        backoff_max: the cap of the retry delay, seconds.
        background: act when due by itself (`False`: the caller drives
            [`step`][sa_token._lease.LeaseKeeper.step]).
        on_late: called (outside every lock) with a credential that a login in flight obtained
            after [`close`][sa_token._lease.LeaseKeeper.close]: nobody holds it, revoke it.

    The constructor logs in (raising the exchange's error), so a misconfiguration fails there.

    No log line, clock read or callback runs while `_work` (the single-flight lock, held across
    a login or a renewal) or `_state` is held: lines are collected and said afterwards. A reader
    re-entering the keeper from inside its own login (a logging handler of the HTTP library
    asking for the token) is answered without waiting for the lock it holds.
    """

    def __init__(
        self,
        source: KeeperSource,
        exchange: Authenticator[C],
        *,
        name: str,
        renewal_needs_login_token: bool = False,
        clock: Optional[Callable[[], float]] = None,
        rng: Optional[random.Random] = None,
        backoff_max: float = BACKOFF_MAX,
        background: bool = True,
        on_late: Optional[Callable[[C], None]] = None,
    ) -> None:
        self.source = source
        self.exchange = exchange
        cfg = Config(
            name=name, bound=renewal_needs_login_token, clock=clock, backoff_max=backoff_max,
            rng=rng or random.Random(),  # noqa: S311 - jitter, not cryptography
            background=background, on_late=on_late,
        )
        self._engine: Engine[C] = Engine(source, exchange, cfg)  # the plan, its locks, the attempts
        self._slot = _Slot(self)  # its entry on the hub's deadline heap, its worker and subscription
        e = self._engine
        now = e.now()
        with e.work:
            e.login(now)
            plan = e.plan
            err = copy.copy(plan.error) if plan.lease is None else None
            lines = e.report.notes.take()
        say(lines)
        if err is not None:
            raise err
        self._slot.unsubscribe = source.subscribe(self._slot.rotated)
        weakref.finalize(self, self._slot.dropped)
        keepers.add(self)  # for the at-fork handler
        e.phase = "running"
        self._arm()

    # What the slot, the fork handler and tests read of the engine.
    @property
    def _plan(self) -> Plan[C]:
        return self._engine.plan

    @property
    def _work(self) -> OwnedLock:
        return self._engine.work

    @property
    def _phase(self) -> str:
        return self._engine.phase

    @property
    def _report(self) -> Report:
        return self._engine.report

    @property
    def name(self) -> str:
        return self._engine.cfg.name

    @property
    def logins(self) -> int:
        """Successful logins in this process (for tests and metrics)."""
        return self._report.logins

    @property
    def renewals(self) -> int:
        """Successful renewals in this process."""
        return self._report.renewals

    def __repr__(self) -> str:
        lease = self._plan.lease
        state = "closed" if self.closed else (
            f"expires_at={_fmt.iso(lease.expires_at)}" if lease is not None else "no credential"
        )
        return f"LeaseKeeper({self.name}, {state})"

    # ------------------------------------------------------------------ readers ----------
    def current(self) -> Lease[C]:
        """The current lease if it is valid (no wait, no I/O); else log in now, one thread at a
        time, or raise the typed error while the backoff forbids another attempt."""
        lease = self._plan.lease  # before a child's first use starts its own login
        if self._phase == "forked":
            self._first_use_in_child()
        if lease is not None and self._now() < lease.expires_at:
            return lease
        return self._obtain(None)

    def peek(self) -> Optional[Lease[C]]:
        """The lease held now, valid or not, without any action."""
        return self._plan.lease

    def current_nowait(self) -> Optional[Lease[C]]:
        """The current lease if it is valid, else ``None`` (then call `current` in a thread)."""
        lease = self._plan.lease
        if self._phase == "forked":
            self._first_use_in_child()
        return lease if lease is not None and self._now() < lease.expires_at else None

    def replace(self, stale: Lease[C]) -> Lease[C]:
        """The server refused ``stale``'s credential (revoked, server restarted): log in again,
        unless another thread already did. Returns the lease to retry with."""
        return self._obtain(stale)

    def _obtain(self, stale: Optional[Lease[C]]) -> Lease[C]:
        if self.closed:
            raise RuntimeError(f"{self.name}: closed")
        e = self._engine
        if e.work.held() or inside():  # inside our own work: never wait for a lock here
            return self._lease_without_waiting()
        now = e.now()
        with e.work:
            lease, refused = e.plan.lease, getattr(stale, "generation", None)
            if lease is not None and lease.valid(now) and lease.generation != refused:
                return lease  # valid, or another thread logged in while we waited for the lock
            e.login_for(stale, now)
            plan = e.plan
            err = None if plan.error is None else copy.copy(plan.error)  # no traceback shared
            lines = e.report.notes.take()
        say(lines)
        e.hand_over_late()
        lease = plan.lease
        if lease is not None and lease.valid(e.now()):
            return lease
        raise err or self.exchange.error(f"{self.name}: no valid credential", reason="no-credential")

    def _lease_without_waiting(self) -> Lease[C]:
        lease = self._plan.lease
        if lease is not None and lease.valid(self._now()):
            return lease
        raise self.exchange.error(
            f"{self.name}: no valid credential yet (asked from inside its own login)",
            reason="login-in-progress",
            transient=True,
        )

    # ------------------------------------------------------------------ the work ---------
    def step(self) -> float:
        """Do what is due now (renew, log in, retry); return the seconds until the next action.
        What the background worker runs; simulations call it directly with ``background=False``."""
        return self._engine.step()

    # ------------------------------------------------------------------ events -----------
    def rotated(self, tok: Token) -> None:
        """The source read a new projected token (called from the source's thread: no I/O)."""
        self._engine.apply(Rotated(tok), self._now())
        self._arm()

    # ------------------------------------------------------------------ background -------
    def _arm(self, delay: Optional[float] = None) -> None:
        """Plan the next action on the hub (in the background; a simulation drives `step`)."""
        e = self._engine
        if e.cfg.background and e.phase == "running":
            due = max(0.0, e.plan.next_at() - self._now())
            self._slot.arm(min(due, MAX_SLEEP) if delay is None else delay)

    def _first_use_in_child(self) -> None:
        """A forked child's first use: the exchange's fork hook, then the background work (its
        own login first: the parent's credential is only a fallback)."""
        e = self._engine
        with e.state:
            if e.phase != "forked":
                return
            e.phase = "running"
        hook = getattr(self.exchange, "after_fork", None)
        if hook is not None:
            hook()
        self._arm(0.0)

    # ------------------------------------------------------------------ lifecycle --------
    def close(self) -> Optional[Lease[C]]:
        """Stop the background work and let go of the source. Idempotent. Returns the lease
        this process obtained if it is still valid (for a revocation), else ``None``."""
        e = self._engine
        with e.state:
            if e.closed:
                return None
            e.phase = "closed"
            lease = e.plan.lease
            e.plan = Plan(error=e.plan.error)
        self._slot.unsubscribe()
        HUB.cancel(self._slot)
        keepers.discard(self)
        if lease is not None and lease.owned and lease.valid(self._now()):
            return lease
        return None

    @property
    def closed(self) -> bool:
        return self._engine.closed

    def _after_fork(self) -> None:
        """In a forked child: fresh locks; the parent's credential is kept only as a fallback
        while the child logs in for a credential of its own (see `_first_use_in_child`) at its
        first use of the keeper: no thread and no login in a child that never uses it."""
        self._engine.after_fork()

    # ------------------------------------------------------------------ internals --------
    def _now(self) -> float:
        return self._engine.now()

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

The state is one frozen [`Plan`][sa_token._lease_plan.Plan] (the lease readers use, the
failures, the wait for a rotation), replaced whole under one short lock (`_state`); `_work`,
held only by whoever renews or logs in, makes those single flight. Time is the wall clock read
through `sa_token._clock` at each call (freezegun works), or an injected ``clock``.
"""

from __future__ import annotations

import copy
import math
import random
import threading
import weakref
from dataclasses import replace
from typing import Callable, Generic, Optional, TypeVar

from . import _clock, _fmt, _log
from ._hub import HUB
from ._lease_plan import (
    BACKOFF_MAX,
    GRACE_RANGE,
    RENEW_FRACTION,
    Authenticator,
    Config,
    Failed,
    Grant,
    Granted,
    KeeperSource,
    Lease,
    LoginStarted,
    NoToken,
    Outcome,
    Plan,
    RenewRefused,
    Rotated,
    SameToken,
    forked,
    next_plan,
)
from ._lease_report import Report
from ._lease_slot import _Slot, keepers
from ._locks import OwnedLock, inside, say
from ._log import log
from ._token import Token
from .errors import ExchangeError, TokenError

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
        self._cfg = Config(
            name=name,
            bound=renewal_needs_login_token,
            clock=clock,
            rng=rng or random.Random(),  # noqa: S311 - jitter, not cryptography
            backoff_max=backoff_max,
            background=background,
            on_late=on_late,
        )
        self._report = Report(name)  # log lines, warnings once each, counts of logins and renewals
        self._plan: Plan[C] = Plan()  # replaced whole under `_state`
        # Held by whoever renews or logs in (never by readers); not counted by `inside`: a login
        # reads its source, which takes the file's lock.
        self._work = OwnedLock(counted=False)
        self._state = threading.Lock()  # replacing the plan, and close(): held for a few lines
        self._late: list[C] = []  # credentials obtained after close(), for on_late
        self._phase = "starting"  # "running", "forked" (a child before its first use), "closed"
        self._slot = _Slot(self)  # its entry on the hub's deadline heap, its worker and subscription
        now = self._now()
        with self._work:
            self._login(now)
            plan = self._plan
            err = copy.copy(plan.error) if plan.lease is None else None
            lines = self._report.notes.take()
        say(lines)
        if err is not None:
            raise err
        self._slot.unsubscribe = source.subscribe(self._slot.rotated)
        weakref.finalize(self, self._slot.dropped)
        keepers.add(self)  # for the at-fork handler
        self._phase = "running"
        self._arm()

    @property
    def name(self) -> str:
        return self._cfg.name

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
        if self._work.held() or inside():  # inside our own work: never wait for a lock here
            return self._lease_without_waiting()
        now = self._now()
        with self._work:
            lease, refused = self._plan.lease, getattr(stale, "generation", None)
            if lease is not None and lease.valid(now) and lease.generation != refused:
                return lease  # valid, or another thread logged in while we waited for the lock
            self._login_for(stale, now)
            plan = self._plan
            err = None if plan.error is None else copy.copy(plan.error)  # no traceback shared
            lines = self._report.notes.take()
        say(lines)
        self._hand_over_late()
        lease = plan.lease
        if lease is not None and lease.valid(self._now()):
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

    def _login_for(self, stale: Optional[Lease[C]], now: float) -> None:
        """Under the work lock: log in, if the plan allows it now. A ``stale`` lease the server
        refused (maybe renewed since, same credential) is dropped first: nobody uses it, and the
        server answered, so no backoff holds this login back."""
        lease = self._plan.lease
        if stale is not None and lease is not None and lease.generation == stale.generation:
            with self._state:
                self._plan = replace(self._plan, lease=None, retry_at=-math.inf)
        if self._plan.may_login(now):
            self._login(now)

    # ------------------------------------------------------------------ the work ---------
    def step(self) -> float:
        """Do what is due now (renew, log in, retry); return the seconds until the next action.
        What the background worker runs; simulations call it directly with ``background=False``."""
        if self.closed:
            return math.inf
        now = self._now()
        if now >= self._plan.next_at():
            with self._work:
                plan = self._plan
                if now >= plan.next_at():
                    lease = plan.lease
                    if lease is None or plan.login_due(now, bound=self._cfg.bound):
                        self._login(now)
                    else:
                        self._renew(lease, now)
                lines = self._report.notes.take()
            say(lines)
            self._hand_over_late()
        return max(0.0, self._plan.next_at() - self._now())

    def _apply(self, outcome: Outcome[C], now: float) -> Optional[Plan[C]]:
        """Replace the plan by its successor after ``outcome``; ``None`` once closed (a grant
        is then handed to ``on_late``: a lease published after close() would never be revoked)."""
        cfg = self._cfg
        with self._state:
            if self.closed:
                if isinstance(outcome, Granted):
                    self._late.append(outcome.grant.credential)
                return None
            plan = self._plan = next_plan(self._plan, outcome, now, cfg.rng, bound=cfg.bound,
                                          backoff_max=cfg.backoff_max)
        return plan

    def _login(self, now: float) -> None:
        """Log in with the source's current token; on failure keep the current lease."""
        lease = self._plan.lease
        self._apply(LoginStarted(), now)
        try:
            tok = self.source.current()
        except TokenError as exc:
            self._wait(now, NoToken(self._no_token(str(exc), exc.reason)), f"{exc}")
            return
        if self._cfg.bound and lease is not None and lease.renews_until_token_expiry(tok, now):
            # The login is due only because renewals will stop working when this token expires: a
            # login with the same token would be bound to the same expiry. Renew until then and
            # wait for the kubelet's rotation (the lease stays valid meanwhile).
            why = f"the projected token at {_fmt.path(self.source.path)} has not been rotated yet"
            self._wait(now, SameToken(tok, self._no_token(why, "not-rotated")), why, level=_log.INFO)
            return
        try:
            grant = self.exchange.login(tok)
        except ExchangeError as exc:
            self._failed(now, exc, "log in")
            return
        plan = self._apply(Granted(grant, tok, renewal=False), now)
        if plan is not None and plan.lease is not None:  # (else closed meanwhile: handed to on_late)
            self._report.logged_in(tok, grant, plan.lease, now)

    def _renew(self, lease: Lease[C], now: float) -> None:
        try:
            grant = self.exchange.renew(lease.credential)
        except ExchangeError as exc:
            if exc.transient:
                self._failed(now, exc, "renew")
                return
            self._report.renewal_refused(exc.server_message or exc)
            self._apply(RenewRefused(), now)  # retries log in, never renew it again
            self._login(now)
            return
        plan = self._apply(Granted(grant, lease.login_token, renewal=True), now)
        if plan is not None and plan.lease is not None:
            self._report.renewed(plan.lease, now)

    def _no_token(self, why: str, reason: str) -> ExchangeError:
        return self.exchange.error(
            f"{self.name}: cannot log in: {why}; waiting for the kubelet to rotate "
            f"{_fmt.path(self.source.path)}",
            reason="projected-token-" + reason,
        )

    def _wait(self, now: float, outcome: Outcome[C], why: str, level: int = _log.WARNING) -> None:
        plan = self._apply(outcome, now)
        if plan is not None and plan.waiting:
            what = f"waiting for the kubelet to rotate the projected token before logging in: {why}"
            self._warn(now, what, key="wait", level=level)

    def _failed(self, now: float, exc: ExchangeError, what: str) -> None:
        self._apply(Failed(exc), now)
        self._warn(now, f"could not {what}: {exc}", key=f"{what}:{exc.reason}:{exc.status}")

    def _warn(self, now: float, what: str, *, key: str, level: int = _log.WARNING) -> None:
        if self._phase != "starting":  # the constructor raises instead
            self._report.warn(self._plan, now, what, key=key, level=level)

    # ------------------------------------------------------------------ events -----------
    def rotated(self, tok: Token) -> None:
        """The source read a new projected token (called from the source's thread: no I/O)."""
        self._apply(Rotated(tok), self._now())
        self._arm()

    # ------------------------------------------------------------------ background -------
    def _arm(self, delay: Optional[float] = None) -> None:
        """Plan the next action on the hub (in the background; a simulation drives `step`)."""
        if self._cfg.background and self._phase == "running":
            due = max(0.0, self._plan.next_at() - self._now())
            self._slot.arm(min(due, MAX_SLEEP) if delay is None else delay)

    def _first_use_in_child(self) -> None:
        """A forked child's first use: the exchange's fork hook, then the background work (its
        own login first: the parent's credential is only a fallback)."""
        with self._state:
            if self._phase != "forked":
                return
            self._phase = "running"
        hook = getattr(self.exchange, "after_fork", None)
        if hook is not None:
            hook()
        self._arm(0.0)

    def _hand_over_late(self) -> None:
        late, self._late = self._late, []
        for credential in late:
            if self._cfg.on_late is not None:
                try:
                    self._cfg.on_late(credential)
                except Exception:
                    log.exception("sa-token: %s: handling a late credential failed", self.name)

    # ------------------------------------------------------------------ lifecycle --------
    def close(self) -> Optional[Lease[C]]:
        """Stop the background work and let go of the source. Idempotent. Returns the lease
        this process obtained if it is still valid (for a revocation), else ``None``."""
        with self._state:
            if self.closed:
                return None
            self._phase = "closed"
            lease = self._plan.lease
            self._plan = Plan(error=self._plan.error)
        self._slot.unsubscribe()
        HUB.cancel(self._slot)
        keepers.discard(self)
        if lease is not None and lease.owned and lease.valid(self._now()):
            return lease
        return None

    @property
    def closed(self) -> bool:
        return self._phase == "closed"

    def _after_fork(self) -> None:
        """In a forked child: fresh locks; the parent's credential is kept only as a fallback
        while the child logs in for a credential of its own (see `_after_fork_in_child`) at its
        first use of the keeper: no thread and no login in a child that never uses it."""
        self._work = OwnedLock(counted=False)
        self._state = threading.Lock()
        self._report.forked()
        self._late = []
        self._plan = forked(self._plan, self._now())
        if not self.closed:
            self._phase = "forked"  # the deadline inherited from the parent does nothing (`fire`)

    # ------------------------------------------------------------------ internals --------
    def _now(self) -> float:
        return _clock.now(self._cfg.clock)

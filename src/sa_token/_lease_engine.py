"""A lease keeper's schedule and its work: what `sa_token._lease.LeaseKeeper` does when an action
is due (log in, renew, retry) and how each outcome replaces its plan.

The state is one frozen [`Plan`][sa_token._lease_plan.Plan] (the lease readers use, the
failures, the wait for a rotation), replaced whole under one short lock (`state`); `work`, held
only by whoever renews or logs in, makes those single flight. The rules are the pure functions
of `sa_token._lease_plan`; what is said about them is `sa_token._lease_report`'s. No log line,
clock read or callback runs while either lock is held: lines are collected and said afterwards.
"""

from __future__ import annotations

import math
import threading
from dataclasses import replace
from typing import Generic, Optional, TypeVar

from . import _clock, _fmt, _log
from ._lease_plan import (
    Authenticator,
    Config,
    Failed,
    Granted,
    KeeperSource,
    Lease,
    LoginStarted,
    NoToken,
    Outcome,
    Plan,
    RenewRefused,
    SameToken,
    forked,
    next_plan,
)
from ._lease_report import Report
from ._locks import OwnedLock, say
from ._log import log
from .errors import ExchangeError, TokenError

__all__ = ["Engine"]

C = TypeVar("C")


class Engine(Generic[C]):
    """The plan of one keeper, the locks around it, and the attempts that change it."""

    def __init__(self, source: KeeperSource, exchange: Authenticator[C], cfg: Config) -> None:
        self.source, self.exchange, self.cfg = source, exchange, cfg
        self.report = Report(cfg.name)  # log lines, warnings once each, counts of logins and renewals
        self.plan: Plan[C] = Plan()  # replaced whole under `state`
        # Held by whoever renews or logs in (never by readers); not counted by `inside`: a login
        # reads its source, which takes the file's lock.
        self.work = OwnedLock(counted=False)
        self.state = threading.Lock()  # replacing the plan, and close(): held for a few lines
        self.late: list[C] = []  # credentials obtained after close(), for on_late
        self.phase = "starting"  # "running", "forked" (a child before its first use), "closed"

    @property
    def closed(self) -> bool:
        return self.phase == "closed"

    def now(self) -> float:
        return _clock.now(self.cfg.clock)

    def step(self) -> float:
        """Do what is due now (renew, log in, retry); return the seconds until the next action."""
        if self.closed:
            return math.inf
        now = self.now()
        if now >= self.plan.next_at():
            with self.work:
                plan = self.plan
                if now >= plan.next_at():
                    lease = plan.lease
                    if lease is None or plan.login_due(now, bound=self.cfg.bound):
                        self.login(now)
                    else:
                        self.renew(lease, now)
                lines = self.report.notes.take()
            say(lines)
            self.hand_over_late()
        return max(0.0, self.plan.next_at() - self.now())

    def apply(self, outcome: Outcome[C], now: float) -> Optional[Plan[C]]:
        """Replace the plan by its successor after ``outcome``; ``None`` once closed (a grant
        is then handed to ``on_late``: a lease published after close() would never be revoked)."""
        cfg = self.cfg
        with self.state:
            if self.closed:
                if isinstance(outcome, Granted):
                    self.late.append(outcome.grant.credential)
                return None
            plan = self.plan = next_plan(self.plan, outcome, now, cfg.rng, bound=cfg.bound,
                                         backoff_max=cfg.backoff_max)
        return plan

    def login_for(self, stale: Optional[Lease[C]], now: float) -> None:
        """Under the work lock: log in, if the plan allows it now. A ``stale`` lease the server
        refused (maybe renewed since, same credential) is dropped first: nobody uses it, and the
        server answered, so no backoff holds this login back."""
        lease = self.plan.lease
        if stale is not None and lease is not None and lease.generation == stale.generation:
            with self.state:
                self.plan = replace(self.plan, lease=None, retry_at=-math.inf)
        if self.plan.may_login(now):
            self.login(now)

    def login(self, now: float) -> None:
        """Log in with the source's current token; on failure keep the current lease."""
        lease = self.plan.lease
        self.apply(LoginStarted(), now)
        try:
            tok = self.source.current()
        except TokenError as exc:
            self._wait(now, NoToken(self._no_token(str(exc), exc.reason)), f"{exc}")
            return
        if self.cfg.bound and lease is not None and lease.renews_until_token_expiry(tok, now):
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
        plan = self.apply(Granted(grant, tok, renewal=False), now)
        if plan is not None and plan.lease is not None:  # (else closed meanwhile: handed to on_late)
            self.report.logged_in(tok, grant, plan.lease, now)

    def renew(self, lease: Lease[C], now: float) -> None:
        try:
            grant = self.exchange.renew(lease.credential)
        except ExchangeError as exc:
            if exc.transient:
                self._failed(now, exc, "renew")
                return
            self.report.renewal_refused(exc.server_message or exc)
            self.apply(RenewRefused(), now)  # retries log in, never renew it again
            self.login(now)
            return
        plan = self.apply(Granted(grant, lease.login_token, renewal=True), now)
        if plan is not None and plan.lease is not None:
            self.report.renewed(plan.lease, now)

    def _no_token(self, why: str, reason: str) -> ExchangeError:
        return self.exchange.error(
            f"{self.cfg.name}: cannot log in: {why}; waiting for the kubelet to rotate "
            f"{_fmt.path(self.source.path)}",
            reason="projected-token-" + reason,
        )

    def _wait(self, now: float, outcome: Outcome[C], why: str, level: int = _log.WARNING) -> None:
        plan = self.apply(outcome, now)
        if plan is not None and plan.waiting:
            what = f"waiting for the kubelet to rotate the projected token before logging in: {why}"
            self._warn(now, what, key="wait", level=level)

    def _failed(self, now: float, exc: ExchangeError, what: str) -> None:
        self.apply(Failed(exc), now)
        self._warn(now, f"could not {what}: {exc}", key=f"{what}:{exc.reason}:{exc.status}")

    def _warn(self, now: float, what: str, *, key: str, level: int = _log.WARNING) -> None:
        if self.phase != "starting":  # the constructor raises instead
            self.report.warn(self.plan, now, what, key=key, level=level)

    def hand_over_late(self) -> None:
        late, self.late = self.late, []
        for credential in late:
            if self.cfg.on_late is not None:
                try:
                    self.cfg.on_late(credential)
                except Exception:
                    log.exception("sa-token: %s: handling a late credential failed", self.cfg.name)

    def after_fork(self) -> None:
        """In a forked child: fresh locks, no late credentials; the parent's lease only as a
        fallback (`forked`); a running keeper waits for its first use (``"forked"``)."""
        self.work = OwnedLock(counted=False)
        self.state = threading.Lock()
        self.report.forked()
        self.late = []
        self.plan = forked(self.plan, self.now())
        if not self.closed:
            self.phase = "forked"  # the deadline inherited from the parent does nothing (`fire`)

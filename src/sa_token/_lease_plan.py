"""When a [`LeaseKeeper`][sa_token._lease.LeaseKeeper] acts next, and how: pure functions of
(plan, outcome, now). No lock, no clock, no I/O: the keeper reads the clock, does the network
call, and replaces its one frozen `Plan` with `next_plan(plan, outcome, ...)` under its lock.
A table-driven test pins every rule down (`tests/test_lease_plan.py`).

The rules:

* renew at about two thirds of the remaining TTL plus jitter, as Vault's own lifetime watcher
  does; a lease's expiry counts from when the request was *sent* (a slow answer shortens it);
* log in instead when the credential cannot be extended (not renewable, capped by a
  ``max_ttl``, renewal refused) and, for a ``bound`` exchange (OpenBao's Kubernetes method
  reviews the login-time token at every renewal), before the login-time projected token
  expires, and soon after each rotation (spread over a few seconds);
* an unusable projected token: wait for the kubelet's rotation (look again every `WAIT_POLL`);
* a failure: retry with capped exponential backoff and jitter, keeping the lease while valid.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Any, Callable, Generic, Optional, Protocol, TypeVar, Union

from ._token import Token
from .errors import ExchangeError

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_JITTER",
    "BACKOFF_MAX",
    "GRACE_RANGE",
    "LOGIN_TOKEN_MARGIN",
    "RENEW_FRACTION",
    "ROTATION_SPREAD",
    "WAIT_POLL",
    "Failed",
    "Grant",
    "Granted",
    "Lease",
    "LoginStarted",
    "NoToken",
    "Plan",
    "RenewRefused",
    "Rotated",
    "SameToken",
    "login_token_limit",
    "next_plan",
]

C = TypeVar("C")

# Act at two thirds of the remaining TTL plus a third of a "grace" of 10-20% of the TTL, so
# between 70% and 73%: Vault's LifetimeWatcher (api/lifetime_watcher.go, calculateSleepDuration).
RENEW_FRACTION = 2 / 3
GRACE_RANGE = (0.1, 0.2)
# Backoff while the server is unreachable or failing: from 1 s to 5 min, as Vault Agent's
# auto-auth; each delay multiplied by a random factor in [0.5, 1.5) (the RandomizationFactor of
# the backoff package Vault uses), so that pods that lost the server together do not return
# together.
BACKOFF_BASE = 1.0
BACKOFF_MAX = 300.0
BACKOFF_JITTER = 0.5
# After the kubelet rotates the projected token, log in again within a random delay of up to
# 5 s (and at most a tenth of what is left of the old token), so a node's pods spread out.
ROTATION_SPREAD = 5.0
# Stop renewing this long before the login-time projected token expires (a tenth of its
# lifetime, at most 30 s): a renewal reviewed after that expiry makes Vault revoke the token.
LOGIN_TOKEN_MARGIN = 30.0
# While waiting for a rotation (the projected token expired), look at the file again this
# often even without an event, in case an event is missed.
WAIT_POLL = 30.0


@dataclass(frozen=True)
class Grant(Generic[C]):
    """What a login or a renewal returned: the credential (whose ``repr`` must hide its secret),
    its TTL in seconds (0 or less: it does not expire) and whether it can be renewed."""

    credential: C
    ttl: float
    renewable: bool


@dataclass(frozen=True)
class Lease(Generic[C]):
    """One credential and its schedule. Immutable: every change publishes a new one."""

    credential: C
    expires_at: float  # POSIX seconds; math.inf if the credential does not expire
    renewable: bool
    refresh_at: float  # when the keeper acts next, POSIX seconds
    relogin: bool  # the next action is a login: the lease cannot (or must not) be extended
    capped: bool  # the last renewal granted less than the login did: max_ttl is near
    login_token: Token  # the projected token the login sent
    full_ttl: float  # the TTL the login granted; a renewal granting less was capped by max_ttl
    generation: int  # counts this process's logins
    owned: bool = True  # False in a forked child for the parent's credential: never renewed

    def valid(self, now: float) -> bool:
        return now < self.expires_at

    def renews_until_token_expiry(self, tok: Token, now: float) -> bool:
        """Whether a login with ``tok`` would gain nothing: it is the token this lease logged in
        with, and the lease (valid, ours, renewable, not capped) renews until that token's
        expiry anyway. (Only where the server binds a login to its token's expiry.)"""
        return (
            self.valid(now) and self.owned and self.renewable and not self.capped
            and tok.value == self.login_token.value
        )


@dataclass(frozen=True)
class Plan(Generic[C]):
    """Everything the keeper knows about what comes next, replaced whole."""

    lease: Optional[Lease[C]] = None
    failures: int = 0  # failed attempts in a row (the backoff's exponent)
    retry_at: float = -math.inf  # after a failure, or while waiting: when to try again
    waiting: bool = False  # for the kubelet's rotation: the projected token cannot be used
    rotation_at: float = math.inf  # a rotation asks for a login at this time
    error: Optional[ExchangeError] = None  # the last failure: what readers get with no lease
    generation: int = 0  # logins so far in this process: numbers the leases

    def may_login(self, now: float) -> bool:
        """Whether a reader with no valid lease may log in now (not inside a backoff)."""
        return not self.failures or now >= self.retry_at or self.error is None

    def next_at(self) -> float:
        """When the keeper acts next."""
        if self.failures or self.waiting:
            at = self.retry_at
        elif self.lease is None:
            return -math.inf
        else:
            at = self.lease.refresh_at
        return min(at, self.rotation_at)

    def login_due(self, now: float, *, bound: bool) -> bool:
        """Whether the action due now is a login (else a renewal of the lease)."""
        lease = self.lease
        return (
            lease is None
            or not lease.valid(now)
            or lease.relogin
            or not lease.owned
            or now >= self.rotation_at
            or self.waiting
            or (bound and now >= login_token_limit(lease.login_token))  # a late retry
        )


# ------------------------------------------------------------------------------ outcomes ----
@dataclass(frozen=True)
class LoginStarted:
    """A login begins: a rotation seen before now is answered by it."""


@dataclass(frozen=True)
class Granted(Generic[C]):
    """A login (``renewal=False``) or renewal answered with ``grant``; ``token`` is the
    projected token the lease is bound to."""

    grant: Grant[C]
    token: Token
    renewal: bool


@dataclass(frozen=True)
class Failed:
    """The server refused or could not answer (``error.transient``)."""

    error: ExchangeError


@dataclass(frozen=True)
class RenewRefused:
    """A renewal was refused: the lease is never renewed again (a login follows)."""


@dataclass(frozen=True)
class NoToken:
    """The projected token cannot be sent (expired, unreadable, not rotated yet)."""

    error: ExchangeError


@dataclass(frozen=True)
class SameToken:
    """A bound login is due but the file holds the token the lease was bound to."""

    token: Token
    error: ExchangeError  # what readers get if the wait for a rotation starts


@dataclass(frozen=True)
class Rotated:
    """The source read a new projected token."""

    token: Token


Outcome = Union[LoginStarted, Granted[C], Failed, RenewRefused, NoToken, SameToken, Rotated]


def next_plan(
    plan: Plan[C], outcome: Outcome[C], now: float, rng: random.Random, *, bound: bool, backoff_max: float
) -> Plan[C]:
    """The plan after ``outcome`` at ``now`` (for `Granted`: when the request was sent)."""
    if isinstance(outcome, LoginStarted):
        return replace(plan, rotation_at=math.inf)
    if isinstance(outcome, Granted):
        return _granted(plan, outcome, now, rng, bound)
    if isinstance(outcome, Failed):
        failures = plan.failures + 1
        delay = min(backoff_max, BACKOFF_BASE * 2 ** (failures - 1))
        delay *= rng.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)
        return replace(plan, failures=failures, retry_at=now + min(delay, backoff_max), error=outcome.error)
    if isinstance(outcome, RenewRefused):
        lease = plan.lease
        return plan if lease is None else replace(plan, lease=replace(lease, relogin=True))
    if isinstance(outcome, NoToken):
        return _wait(plan, outcome.error, now)
    if isinstance(outcome, SameToken):
        lease = plan.lease
        if lease is not None and now < login_token_limit(lease.login_token):
            # Renew until renewals stop working, then wait for the kubelet's rotation.
            return replace(plan, lease=_scheduled(replace(lease, relogin=False), now, rng, bound))
        return _wait(plan, outcome.error, now)
    return _rotated(plan, outcome.token, now, rng, bound)


def _granted(plan: Plan[C], g: Granted[C], sent: float, rng: random.Random, bound: bool) -> Plan[C]:
    grant, old = g.grant, plan.lease
    renewal = g.renewal and old is not None
    full_ttl = old.full_ttl if renewal and old is not None else grant.ttl
    generation = old.generation if renewal and old is not None else plan.generation + 1
    capped = renewal and 0 < grant.ttl < full_ttl
    lease: Lease[C] = Lease(
        credential=grant.credential,
        expires_at=sent + grant.ttl if grant.ttl > 0 else math.inf,  # from when the request left
        renewable=grant.renewable,
        refresh_at=math.inf,
        relogin=not grant.renewable or capped,
        capped=capped,
        login_token=g.token,
        full_ttl=full_ttl,
        generation=generation,
    )
    scheduled = _scheduled(lease, sent, rng, bound)
    return Plan(lease=scheduled, rotation_at=plan.rotation_at, generation=max(plan.generation, generation))


def _wait(plan: Plan[C], error: ExchangeError, now: float) -> Plan[C]:
    retry_at = plan.retry_at if plan.failures else now + WAIT_POLL
    return replace(plan, waiting=True, retry_at=retry_at, error=error)


def _rotated(plan: Plan[C], tok: Token, now: float, rng: random.Random, bound: bool) -> Plan[C]:
    lease = plan.lease
    if plan.waiting:
        return replace(plan, rotation_at=now)
    if bound and lease is not None and lease.owned and tok.value != lease.login_token.value:
        old_exp = lease.login_token.expires_at
        left = old_exp.timestamp() - now if old_exp is not None else ROTATION_SPREAD * 10
        spread = min(ROTATION_SPREAD, max(0.0, left) / 10)
        return replace(plan, rotation_at=min(plan.rotation_at, now + rng.uniform(0, spread)))
    return plan


def _scheduled(lease: Lease[C], now: float, rng: random.Random, bound: bool) -> Lease[C]:
    """``lease`` with its next action: at 2/3 of the remaining TTL plus jitter; a login
    instead of a renewal where renewing would outlive the login-time token."""
    left = lease.expires_at - now
    if math.isfinite(left):
        at = now + left * RENEW_FRACTION + left * rng.uniform(*GRACE_RANGE) / 3
    else:
        at = math.inf
    relogin = lease.relogin
    if bound and not relogin:
        limit = login_token_limit(lease.login_token)
        if at >= limit:
            at, relogin = max(now, limit), True
    return replace(lease, refresh_at=at, relogin=relogin)


def login_token_limit(tok: Token) -> float:
    """When renewals of a lease bound to ``tok`` must stop: its expiry less a margin."""
    exp = tok.expires_at
    if exp is None:
        return math.inf
    lifetime = tok.lifetime
    margin = min(LOGIN_TOKEN_MARGIN, lifetime.total_seconds() / 10) if lifetime is not None else 0.0
    return exp.timestamp() - margin


def forked(plan: Plan[C], now: float) -> Plan[C]:
    """A forked child's plan: the parent's credential only as a fallback (never renewed nor
    revoked here: not ours) and a login of the child's own due at once."""
    lease = plan.lease
    if lease is not None:
        lease = replace(lease, owned=False, relogin=True, refresh_at=now)
    return Plan(lease=lease, generation=plan.generation)


class Authenticator(Protocol[C]):
    """The calls a [`LeaseKeeper`][sa_token._lease.LeaseKeeper] makes (the integration's side of
    the plan: what `Grant`s come from); each raises
    [`ExchangeError`][sa_token.errors.ExchangeError] (of the integration's subclass) on failure."""

    def login(self, token: Token) -> Grant[C]:
        """Exchange the projected token for a credential."""

    def renew(self, credential: C) -> Grant[C]:
        """Extend the credential's lease."""

    def error(self, message: str, *, reason: str, transient: bool = False) -> ExchangeError:
        """The integration's typed error with this message (for failures found locally)."""


@dataclass(frozen=True)
class Config:
    """A keeper's settings, fixed at construction."""

    name: str
    bound: bool
    clock: Optional[Callable[[], float]]
    rng: random.Random
    backoff_max: float
    background: bool
    on_late: Optional[Callable[[Any], None]]


class KeeperSource(Protocol):
    """What the keeper uses of a [`TokenSource`][sa_token.TokenSource]."""

    @property
    def path(self) -> str: ...

    def current(self) -> Token: ...

    def subscribe(self, callback: Callable[[Token], None]) -> Callable[[], None]: ...

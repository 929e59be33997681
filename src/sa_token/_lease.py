"""Keep a credential obtained by exchanging the projected token valid: the flow every exchange shares.

An *exchange* (Vault's Kubernetes or JWT auth method, a cloud STS) turns the projected token
into a credential with a lifetime (`Authenticator.login`), and may extend it (`Authenticator.renew`).
[`LeaseKeeper`][sa_token._lease.LeaseKeeper] decides when to do which, in a thread of its own,
so that readers never wait for a renewal:

* renew at about two thirds of the TTL plus jitter, as Vault's own lifetime watcher does;
* log in again, with the source's *current* projected token, when the credential cannot be
  extended (not renewable, TTL capped by a `max_ttl`, renewal refused) and, with
  ``renewal_needs_login_token``, soon after each rotation of the projected token (OpenBao's
  Kubernetes method reviews the login-time token again at every renewal, and revokes the Vault
  token when that token has expired);
* never send an expired projected token: wait for the kubelet's rotation, say so in one log
  line, and keep the current credential while it is valid;
* server unreachable, sealed or failing (an error with ``transient=True``): keep the current
  credential while it is valid, and retry with capped exponential backoff and jitter;
* a typed error only once no valid credential exists. Readers then log in themselves, one at a
  time (single flight: 32 threads asking at once cause one login), and no more often than the
  backoff allows.

The state that readers share is one immutable [`Lease`][sa_token._lease.Lease], replaced whole
under one lock (`_work`, held only by whoever renews or logs in). Time is the wall clock read
through `time` at each call (freezegun works), or an injected ``clock``.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import threading
import weakref
from dataclasses import dataclass, replace
from typing import Any, Callable, Generic, Optional, Protocol, TypeVar

from . import _clock, _fmt
from ._hub import at_fork_in_child
from ._locks import Notes, OwnedLock, inside, say
from ._token import Token
from .errors import ExchangeError, TokenError

__all__ = ["Authenticator", "ExchangeError", "Grant", "Lease", "LeaseKeeper"]

log = logging.getLogger("sa_token")

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
# The thread re-reads the clock at least this often (a suspended VM, a wall-clock jump).
MAX_SLEEP = 60.0


@dataclass(frozen=True)
class Grant(Generic[C]):
    """What a login or a renewal returned: the credential (whose ``repr`` must hide its secret),
    its TTL in seconds (0 or less: it does not expire) and whether it can be renewed."""

    credential: C
    ttl: float
    renewable: bool


class Authenticator(Protocol[C]):
    """The calls a [`LeaseKeeper`][sa_token._lease.LeaseKeeper] makes; each raises
    [`ExchangeError`][sa_token.errors.ExchangeError] (of the integration's subclass) on failure."""

    def login(self, token: Token) -> Grant[C]:
        """Exchange the projected token for a credential."""

    def renew(self, credential: C) -> Grant[C]:
        """Extend the credential's lease."""

    def error(self, message: str, *, reason: str, transient: bool = False) -> ExchangeError:
        """The integration's typed error with this message (for failures found locally)."""


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
        background: run the thread (`False`: the caller drives [`step`][sa_token._lease.LeaseKeeper.step]).
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
        source: _Source,
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
        self.name = name
        self.bound = renewal_needs_login_token
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.backoff_max = backoff_max
        self.logins = 0  # successful logins and renewals in this process, for tests and metrics
        self.renewals = 0
        self._generation = 0  # numbers the leases logins publish
        self._lease: Optional[Lease[C]] = None
        # Held by whoever renews or logs in (never by readers); not counted by `inside`: a login
        # reads its source, which takes the file's lock.
        self._work = OwnedLock(counted=False)
        self._state = threading.Lock()  # publishing a lease vs close(): held for a few lines
        self._notes = Notes()  # what to log once `_work` is released (written under it)
        self._on_late = on_late
        self._background = background
        # Threads to start at the next use: in a forked child (its first use starts them and
        # logs in), or after a thread could not start (a pids limit): tried again at each use.
        self._resume = False
        self._late: list[C] = []  # credentials obtained after close(), for on_late
        self._forked = False  # a forked child that has not used the keeper yet
        self._wake = threading.Event()
        self._failures = 0
        self._retry_at = -math.inf
        self._last_error: Optional[ExchangeError] = None
        self._warned: Optional[str] = None  # the last failure logged, so each is logged once
        self._rotation_at = math.inf  # log in at this time: a rotation happened (or was awaited)
        self._waiting = False  # for a rotation: the projected token expired or was already used
        self._poll_at = math.inf  # while waiting: look at the source again at this time
        self._closed = False
        self._started = False  # until the first login succeeded: its failure is raised, not logged
        self._thread: Optional[threading.Thread] = None
        self._unsubscribe: Callable[[], None] = _nothing
        now = self._now()
        with self._work:
            self._login(now)
            err = copy.copy(self._last_error) if self.peek() is None else None
            lines = self._notes.take()
        say(lines)
        if err is not None:
            raise err
        self._started = True
        ref = weakref.ref(self)
        self._unsubscribe = source.subscribe(lambda tok: _on_rotation(ref, tok))
        with _KEEPERS_LOCK:
            _KEEPERS.add(self)
        self._start()

    def __repr__(self) -> str:
        lease = self._lease
        state = "closed" if self._closed else (
            f"expires_at={_fmt.iso(lease.expires_at)}" if lease is not None else "no credential"
        )
        return f"LeaseKeeper({self.name}, {state})"

    # ------------------------------------------------------------------ readers ----------
    def current(self) -> Lease[C]:
        """The current lease if it is valid (no wait, no I/O); else log in now, one thread at a
        time, or raise the typed error while the backoff forbids another attempt."""
        if self._resume:
            self._start()
        lease = self._lease
        if lease is not None and self._now() < lease.expires_at:
            return lease
        return self._obtain(None)

    def peek(self) -> Optional[Lease[C]]:
        """The lease held now, valid or not, without any action."""
        return self._lease

    def current_nowait(self) -> Optional[Lease[C]]:
        """The current lease if it is valid, else ``None`` (then call `current` in a thread)."""
        if self._resume:
            self._start()
        lease = self._lease
        return lease if lease is not None and self._now() < lease.expires_at else None

    def replace(self, stale: Lease[C]) -> Lease[C]:
        """The server refused ``stale``'s credential (revoked, server restarted): log in again,
        unless another thread already did. Returns the lease to retry with."""
        return self._obtain(stale)

    def _obtain(self, stale: Optional[Lease[C]]) -> Lease[C]:
        if self._closed:
            raise RuntimeError(f"{self.name}: closed")
        if self._work.held() or inside():  # inside our own work: never wait for a lock here
            lease = self._lease
            if lease is not None and lease.valid(self._now()):
                return lease
            raise self.exchange.error(
                f"{self.name}: no valid credential yet (asked from inside its own login)",
                reason="login-in-progress",
                transient=True,
            )
        now = self._now()
        with self._work:
            lease = self._lease
            fresh = stale is None or (lease is not None and lease.generation != stale.generation)
            if lease is not None and lease.valid(now) and fresh:
                return lease  # valid, or another thread logged in while we waited for the lock
            if stale is not None and lease is not None and lease.generation == stale.generation:
                self._lease = None  # refused (maybe renewed since, same token): nobody uses it
                self._retry_at = -math.inf  # the server answered: no backoff for this login
            if now >= self._retry_at or self._last_error is None:
                self._login(now)
            lease = self._lease
            # a fresh copy: no traceback shared across threads
            err = None if self._last_error is None else copy.copy(self._last_error)
            lines = self._notes.take()
        say(lines)
        self._hand_over_late()
        if lease is not None and lease.valid(self._now()):
            return lease
        if err is None:
            err = self.exchange.error(f"{self.name}: no valid credential", reason="no-credential")
        raise err

    # ------------------------------------------------------------------ the work ---------
    def step(self) -> float:
        """Do what is due now (renew, log in, retry); return the seconds until the next action.
        The thread's loop; simulations call it directly with ``background=False``."""
        if self._closed:
            return math.inf
        now = self._now()
        if now >= self._due():
            with self._work:
                if now >= self._due():
                    self._act(now)
                lines = self._notes.take()
            say(lines)
            self._hand_over_late()
        return max(0.0, self._due() - self._now())

    def _due(self) -> float:
        """When to act next: a retry after a failure, the lease's schedule, a rotation."""
        lease = self._lease
        if self._failures:
            at = self._retry_at
        elif self._waiting:
            at = self._poll_at
        elif lease is None:
            return -math.inf
        else:
            at = lease.refresh_at
        return min(at, self._rotation_at)

    def _act(self, now: float) -> None:
        lease = self._lease
        if (
            lease is None
            or not lease.valid(now)
            or lease.relogin
            or not lease.owned
            or now >= self._rotation_at
            or self._waiting
            or (self.bound and now >= self._login_token_limit(lease.login_token))  # a late retry
        ):
            self._login(now)
        else:
            self._renew(lease, now)

    def _login(self, now: float) -> None:
        """Log in with the source's current token; on failure keep the current lease."""
        lease = self._lease
        self._rotation_at = math.inf
        try:
            tok = self.source.current()
        except TokenError as exc:
            self._wait_for_rotation(now, f"{exc}", exc.reason)
            return
        if (
            self.bound
            and lease is not None
            and lease.valid(now)
            and lease.owned
            and lease.renewable
            and not lease.capped
            and tok.value == lease.login_token.value
        ):
            # The login is due only because renewals will stop working when this token expires: a
            # login with the same token would be bound to the same expiry. Renew until then and
            # wait for the kubelet's rotation (the lease stays valid meanwhile).
            if now < self._login_token_limit(lease.login_token):
                self._lease = self._scheduled(replace(lease, relogin=False), now)
                return
            why = f"the projected token at {_fmt.path(self.source.path)} has not been rotated yet"
            self._wait_for_rotation(now, why, "not-rotated", level=logging.INFO)
            return
        try:
            grant = self.exchange.login(tok)
        except ExchangeError as exc:
            self._failed(now, exc, "log in")
            return
        if self._closed:  # closed while the login was in flight: nobody may keep this credential
            self._late.append(grant.credential)
            return
        self.logins += 1
        self._generation += 1
        new = self._publish(grant, now, tok, full_ttl=grant.ttl, generation=self._generation, capped=False)
        left = new.expires_at - now
        self._notes.add(
            logging.INFO,
            "sa-token: %s: logged in with the projected token %s (%s, valid for %s%s)",
            self.name,
            _describe(tok),
            grant.credential,
            _fmt.duration(left),
            ", renewable" if grant.renewable else ", not renewable",
        )

    def _renew(self, lease: Lease[C], now: float) -> None:
        try:
            grant = self.exchange.renew(lease.credential)
        except ExchangeError as exc:
            if exc.transient:
                self._failed(now, exc, "renew")
                return
            why = exc.server_message or exc
            self._notes.add(
                logging.INFO, "sa-token: %s: renewal refused (%s); logging in again", self.name, why
            )
            self._lease = replace(lease, relogin=True)  # retries log in, never renew it again
            self._login(now)
            return
        self.renewals += 1
        capped = grant.ttl > 0 and grant.ttl < lease.full_ttl
        new = self._publish(
            grant, now, lease.login_token, full_ttl=lease.full_ttl, generation=lease.generation, capped=capped
        )
        self._notes.add(
            logging.DEBUG,
            "sa-token: %s: renewed, valid for %s%s",
            self.name,
            _fmt.duration(new.expires_at - now),
            " (capped by the maximum TTL: logging in again before it ends)" if capped else "",
        )

    def _publish(
        self, grant: Grant[C], sent: float, tok: Token, *, full_ttl: float, generation: int, capped: bool
    ) -> Lease[C]:
        expires_at = sent + grant.ttl if grant.ttl > 0 else math.inf  # from when the request left
        new = Lease(
            credential=grant.credential,
            expires_at=expires_at,
            renewable=grant.renewable,
            refresh_at=math.inf,
            relogin=not grant.renewable or capped,
            capped=capped,
            login_token=tok,
            full_ttl=full_ttl,
            generation=generation,
        )
        new = self._scheduled(new, sent)
        with self._state:  # against close(): a lease published after it would never be revoked
            if self._closed:
                self._late.append(grant.credential)
                return new
            self._lease = new
        self._failures = 0
        self._retry_at = -math.inf
        self._last_error = None
        self._waiting = False
        if self._warned is not None:
            self._notes.add(logging.INFO, "sa-token: %s: recovered", self.name)
            self._warned = None
        return new

    def _scheduled(self, lease: Lease[C], now: float) -> Lease[C]:
        """``lease`` with its next action: at 2/3 of the remaining TTL plus jitter; a login
        instead of a renewal where renewing would outlive the login-time token."""
        left = lease.expires_at - now
        if math.isfinite(left):
            grace = left * self._rng.uniform(*GRACE_RANGE)
            at = now + left * RENEW_FRACTION + grace / 3
        else:
            at = math.inf
        relogin = lease.relogin
        if self.bound and not relogin:
            limit = self._login_token_limit(lease.login_token)
            if at >= limit:
                at, relogin = max(now, limit), True
        return replace(lease, refresh_at=at, relogin=relogin)

    def _login_token_limit(self, tok: Token) -> float:
        exp = tok.expires_at
        if exp is None:
            return math.inf
        lifetime = tok.lifetime
        margin = min(LOGIN_TOKEN_MARGIN, lifetime.total_seconds() / 10) if lifetime is not None else 0.0
        return exp.timestamp() - margin

    def _failed(self, now: float, exc: ExchangeError, what: str) -> None:
        self._failures += 1
        delay = min(self.backoff_max, BACKOFF_BASE * 2 ** (self._failures - 1))
        delay *= self._rng.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)
        self._retry_at = now + min(delay, self.backoff_max)
        self._last_error = exc
        self._warn(now, f"could not {what}: {exc}", key=f"{what}:{exc.reason}:{exc.status}")

    def _wait_for_rotation(self, now: float, why: str, reason: str, level: int = logging.WARNING) -> None:
        self._waiting = True
        self._poll_at = now + WAIT_POLL
        self._last_error = self.exchange.error(
            f"{self.name}: cannot log in: {why}; waiting for the kubelet to rotate "
            f"{_fmt.path(self.source.path)}",
            reason="projected-token-" + reason,
        )
        what = f"waiting for the kubelet to rotate the projected token before logging in: {why}"
        self._warn(now, what, key="wait", level=level)

    def _warn(self, now: float, what: str, *, key: str, level: int = logging.WARNING) -> None:
        if self._warned == key or not self._started:
            return
        self._warned = key
        lease = self._lease
        if lease is not None and lease.valid(now):
            keep = f"keeping the current credential (valid for {_fmt.duration(lease.expires_at - now)})"
        else:
            keep = "no valid credential until this succeeds"
        retry = (
            f"; retrying in {_fmt.duration(self._retry_at - now)}"
            if self._failures and math.isfinite(self._retry_at)
            else ""
        )
        self._notes.add(level, "sa-token: %s: %s; %s%s", self.name, what, keep, retry)

    # ------------------------------------------------------------------ events -----------
    def rotated(self, tok: Token) -> None:
        """The source read a new projected token (called from the source's thread: no I/O)."""
        lease = self._lease
        if self._waiting:
            self._rotation_at = self._now()
        elif self.bound and lease is not None and lease.owned and tok.value != lease.login_token.value:
            now = self._now()
            old_exp = lease.login_token.expires_at
            left = old_exp.timestamp() - now if old_exp is not None else ROTATION_SPREAD * 10
            spread = min(ROTATION_SPREAD, max(0.0, left) / 10)
            self._rotation_at = min(self._rotation_at, now + self._rng.uniform(0, spread))
        else:
            return
        self._wake.set()

    # ------------------------------------------------------------------ lifecycle --------
    def _start(self) -> None:
        """Start the thread (and, in a forked child, what its first use needs). A thread that
        cannot start (a pids limit) is tried again at the next use, never given up on."""
        self._resume = False
        hook = getattr(self.exchange, "after_fork", None) if self._forked else None
        self._forked = False
        if hook is not None:
            hook()
        if not self._background or self._closed:
            return
        ref = weakref.ref(self)
        thread = threading.Thread(target=_run, args=(ref, self._wake), name="sa-token-lease", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread"
            self._resume = True
            if self._warned != "thread":
                self._warned = "thread"
                log.warning("sa-token: %s: cannot start the renewal thread (%s); retried at the next use",
                            self.name, _fmt.text(exc))
            return
        self._thread = thread

    def _hand_over_late(self) -> None:
        late, self._late = self._late, []
        for credential in late:
            if self._on_late is not None:
                try:
                    self._on_late(credential)
                except Exception:
                    log.exception("sa-token: %s: handling a late credential failed", self.name)

    def close(self) -> Optional[Lease[C]]:
        """Stop the thread and the subscription. Idempotent. Returns the lease this process
        obtained if it is still valid (for a revocation), else ``None``."""
        with self._state:
            if self._closed:
                return None
            self._closed = True
            lease, self._lease = self._lease, None
        self._unsubscribe()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        with _KEEPERS_LOCK:
            _KEEPERS.discard(self)
        if lease is not None and lease.owned and lease.valid(self._now()):
            return lease
        return None

    @property
    def closed(self) -> bool:
        return self._closed

    def _after_fork(self) -> None:
        """In a forked child: fresh locks; the parent's credential is kept only as a fallback
        while the child logs in for a credential of its own (see `_after_fork_in_child`) at its
        first use of the keeper: no thread and no login in a child that never uses it."""
        self._work = OwnedLock(counted=False)
        self._state = threading.Lock()
        self._notes = Notes()
        self._late = []
        self._wake = threading.Event()
        lease = self._lease
        if lease is not None:
            self._lease = replace(lease, owned=False, relogin=True, refresh_at=self._now())
        self._failures = 0
        self._retry_at = -math.inf
        self._rotation_at = math.inf
        self._waiting = False
        self.logins = self.renewals = 0
        self._thread = None
        self._forked = True
        self._resume = not self._closed

    # ------------------------------------------------------------------ internals --------
    def _now(self) -> float:
        return _clock.now(self._clock)


class _Source(Protocol):
    """What the keeper uses of a [`TokenSource`][sa_token.TokenSource]."""

    @property
    def path(self) -> str: ...

    def current(self) -> Token: ...

    def subscribe(self, callback: Callable[[Token], None]) -> Callable[[], None]: ...


def _nothing() -> None:
    pass


def _describe(tok: Token) -> str:
    """A projected token for a log line: its jti and expiry, never its value."""
    jti = tok.claims.get("jti")
    exp = tok.expires_at
    return f"(jti {_fmt.text(jti) if jti else 'none'}, expires {_fmt.iso(exp) if exp else 'never'})"


def _on_rotation(ref: weakref.ReferenceType[LeaseKeeper[Any]], tok: Token) -> None:
    keeper = ref()
    if keeper is not None:
        keeper.rotated(tok)


def _run(ref: weakref.ReferenceType[LeaseKeeper[Any]], wake: threading.Event) -> None:
    """The keeper's thread. Holds the keeper only weakly between steps, so a keeper dropped
    without close() is collected and its thread ends."""
    while True:
        keeper = ref()
        if keeper is None or keeper.closed or keeper._wake is not wake:
            return
        wake.clear()
        try:
            delay = keeper.step()
        except Exception:  # pragma: no cover - a bug; keep the thread alive
            log.exception("sa-token: %s: unexpected error", keeper.name)
            delay = BACKOFF_BASE
        del keeper
        wake.wait(min(delay, MAX_SLEEP))


_KEEPERS: weakref.WeakSet[LeaseKeeper[Any]] = weakref.WeakSet()
_KEEPERS_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    """The one at-fork handler of exchanged credentials.

    Decision: a child does not share the parent's credential beyond a grace period. A Vault
    token used by several processes is legal, but one process's `revoke_on_close` (or a renewal
    that Vault refuses and so revokes the token) would cut off all the others, and every
    process would renew the same token. So each child keeps the parent's credential only as a
    fallback (readers use it at once, nothing waits), never renews or revokes it, and logs in for
    its own from its own thread, started at the child's first use of the keeper: a child that
    never uses it (a pool worker, the pre-exec child of ``subprocess(preexec_fn=...)``) makes no
    login whose token nobody would revoke. Locks the parent's threads may have held are replaced.
    """
    global _KEEPERS_LOCK  # noqa: PLW0603
    _KEEPERS_LOCK = threading.Lock()
    for keeper in list(_KEEPERS):
        keeper._after_fork()


# Part of the process's one at-fork handler: it runs after the hub has given every token file
# and source a fresh lock, so the keepers' new threads can read their sources at once.
at_fork_in_child(_after_fork_in_child)

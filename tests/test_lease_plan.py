"""The lease keeper's rules, pinned down as a table: `next_plan` is a pure function of (plan,
outcome, now, rng), so each row is one call and its expected answer (issue 20: four mutants of
the old keeper survived the suite; each has a row here that kills it)."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from sa_token._lease_plan import (
    BACKOFF_JITTER,
    GRACE_RANGE,
    LOGIN_TOKEN_MARGIN,
    RENEW_FRACTION,
    ROTATION_SPREAD,
    WAIT_POLL,
    Failed,
    Grant,
    Granted,
    Lease,
    LoginStarted,
    NoToken,
    Plan,
    RenewRefused,
    Rotated,
    SameToken,
    login_token_limit,
    next_plan,
)
from sa_token._token import Token, parse_token
from sa_token.errors import ExchangeError
from sa_token.testing import TokenIssuer

NOW = 1_900_000_000.0
LOW, HIGH = RENEW_FRACTION + GRACE_RANGE[0] / 3, RENEW_FRACTION + GRACE_RANGE[1] / 3  # 70%, 73.3%


@pytest.fixture(scope="module")
def tokens() -> dict[str, Token]:
    issuer = TokenIssuer()
    return {
        # a projected token minted now, living 600 s; one living a day; the next one
        "t600": parse_token(issuer.issue(audiences=["vault"], now=NOW, expiration_seconds=600)),
        "t1d": parse_token(issuer.issue(audiences=["vault"], now=NOW, expiration_seconds=86400)),
        "next": parse_token(issuer.issue(audiences=["vault"], now=NOW + 480, expiration_seconds=600)),
        "t100": parse_token(issuer.issue(audiences=["vault"], now=NOW, expiration_seconds=100)),
    }


def _plan(outcome: Any, plan: Plan[str] | None = None, *, now: float = NOW, bound: bool = False,
          seed: int = 1) -> Plan[str]:
    return next_plan(plan or Plan(), outcome, now, random.Random(seed), bound=bound, backoff_max=300.0)


def _login(tok: Token, ttl: float = 3600, renewable: bool = True, **kw: Any) -> Plan[str]:
    return _plan(Granted(Grant("cred", ttl, renewable), tok, renewal=False), **kw)


ERR = ExchangeError("sealed", reason="unavailable", transient=True)


def test_expiry_counts_from_when_the_request_was_sent(tokens: dict[str, Token]) -> None:
    """Mutant L1: counting from the answer lets a slow answer outlive the server's TTL."""
    plan = _login(tokens["t1d"], ttl=60, now=NOW)
    assert plan.lease is not None and plan.lease.expires_at == NOW + 60
    assert plan.generation == plan.lease.generation == 1 and plan.failures == 0


@pytest.mark.parametrize("ttl", [60.0, 3600.0, 86400.0])
def test_renewal_at_70_to_73_percent_of_the_ttl(tokens: dict[str, Token], ttl: float) -> None:
    points = []
    for seed in range(30):
        lease = _login(tokens["t1d"], ttl=ttl, seed=seed).lease
        assert lease is not None and not lease.relogin
        points.append((lease.refresh_at - NOW) / ttl)
    assert min(points) >= LOW and max(points) < HIGH and len(set(points)) > 20


@pytest.mark.parametrize(
    ("ttl", "renewable", "relogin"),
    [(60, True, False), (60, False, True), (0, True, False)],  # a batch token: log in instead
)
def test_what_the_next_action_is(tokens: dict[str, Token], ttl: float, renewable: bool, relogin: bool) -> None:
    plan = _login(tokens["t1d"], ttl=ttl, renewable=renewable)
    assert plan.lease is not None and plan.lease.relogin is relogin
    if ttl == 0:
        assert plan.lease.expires_at == math.inf and plan.next_at() == math.inf


def test_the_login_token_limit_for_a_bound_exchange(tokens: dict[str, Token]) -> None:
    """Mutant L2: renewals of a bound lease stop before the login-time token expires, less a
    tenth of its life, at most LOGIN_TOKEN_MARGIN."""
    t600 = tokens["t600"]
    exp = t600.expires_at
    assert exp is not None
    assert login_token_limit(t600) == exp.timestamp() - min(LOGIN_TOKEN_MARGIN, 60)  # 30 s
    t100 = tokens["t100"]  # a short life: the margin is a tenth of it, 10 s
    assert login_token_limit(t100) == NOW + 100 - 10
    plan = _login(t600, ttl=3600, bound=True)  # 2/3 of an hour lies past the token's 600 s
    assert plan.lease is not None
    assert plan.lease.refresh_at == login_token_limit(t600) and plan.lease.relogin
    free = _login(t600, ttl=3600, bound=False)  # not bound: renew as the TTL says
    assert free.lease is not None and not free.lease.relogin and free.lease.refresh_at > NOW + 2500
    inside = _login(t600, ttl=60, bound=True)  # the 2/3 point comes first: renew
    assert inside.lease is not None and not inside.lease.relogin
    assert inside.login_due(login_token_limit(t600), bound=True)  # a late retry logs in
    assert not inside.login_due(NOW + 1, bound=True)


def test_the_spread_after_a_rotation(tokens: dict[str, Token]) -> None:
    """Mutant L3: a bound keeper logs in within min(ROTATION_SPREAD, a tenth of what is left
    of the old token) of the rotation, spread over pods; an unbound one does not log in."""
    plan = _login(tokens["t600"], ttl=3600, bound=True)
    at = NOW + 480
    spreads = set()
    for seed in range(40):
        rotated = _plan(Rotated(tokens["next"]), plan, now=at, bound=True, seed=seed)
        assert at <= rotated.rotation_at <= at + min(ROTATION_SPREAD, 120 / 10)
        spreads.add(rotated.rotation_at)
    assert len(spreads) > 30
    late = _plan(Rotated(tokens["next"]), plan, now=NOW + 590, bound=True)  # 10 s left: 1 s spread
    assert NOW + 590 <= late.rotation_at <= NOW + 591
    assert _plan(Rotated(tokens["next"]), plan, now=at, bound=False).rotation_at == math.inf
    assert _plan(Rotated(tokens["t600"]), plan, now=at, bound=True).rotation_at == math.inf  # same
    assert _plan(LoginStarted(), _plan(Rotated(tokens["next"]), plan, now=at, bound=True)).rotation_at == math.inf


def test_backoff_doubles_with_jitter_up_to_the_cap(tokens: dict[str, Token]) -> None:
    plan = _login(tokens["t1d"])
    delays = []
    for n in range(12):
        plan = _plan(Failed(ERR), plan, now=NOW, seed=n)
        delays.append(plan.retry_at - NOW)
        base = min(300.0, 2.0**n)
        assert base * (1 - BACKOFF_JITTER) <= delays[-1] <= min(300.0, base * (1 + BACKOFF_JITTER))
    assert plan.failures == 12 and plan.error is ERR and plan.lease is not None  # the lease is kept
    assert plan.next_at() == plan.retry_at
    assert not plan.may_login(NOW) and plan.may_login(plan.retry_at)
    recovered = _login(tokens["t1d"], plan=plan)
    assert recovered.failures == 0 and recovered.error is None and recovered.generation == 2


def test_no_token_waits_for_the_rotation(tokens: dict[str, Token]) -> None:
    plan = _plan(NoToken(ERR), _login(tokens["t600"]), now=NOW + 700)
    assert plan.waiting and plan.retry_at == NOW + 700 + WAIT_POLL and plan.error is ERR
    assert plan.login_due(NOW + 700, bound=False)
    assert _plan(Rotated(tokens["next"]), plan, now=NOW + 710).rotation_at == NOW + 710  # at once


def test_the_same_token_renews_until_the_limit_then_waits(tokens: dict[str, Token]) -> None:
    t600 = tokens["t600"]
    plan = _login(t600, ttl=60, bound=True)
    same = _plan(SameToken(t600, ERR), plan, now=NOW + 100, bound=True)
    assert same.lease is not None and not same.lease.relogin and not same.waiting
    past = _plan(SameToken(t600, ERR), plan, now=login_token_limit(t600), bound=True)
    assert past.waiting and past.error is ERR


def test_a_refused_renewal_is_never_tried_again(tokens: dict[str, Token]) -> None:
    plan = _plan(RenewRefused(), _login(tokens["t1d"]))
    assert plan.lease is not None and plan.lease.relogin and plan.login_due(NOW, bound=False)


def test_a_renewal_keeps_the_login_token_and_sees_the_cap(tokens: dict[str, Token]) -> None:
    plan = _login(tokens["t1d"], ttl=3600)
    renewed = _plan(Granted(Grant("cred", 3600, True), tokens["t1d"], renewal=True), plan, now=NOW + 2500)
    assert renewed.lease is not None and not renewed.lease.capped and renewed.generation == 1
    capped = _plan(Granted(Grant("cred", 1200, True), tokens["t1d"], renewal=True), plan, now=NOW + 2500)
    assert capped.lease is not None and capped.lease.capped and capped.lease.relogin
    assert capped.lease.full_ttl == 3600 and capped.lease.expires_at == NOW + 2500 + 1200


def test_lease_is_frozen(tokens: dict[str, Token]) -> None:
    lease = _login(tokens["t1d"]).lease
    assert isinstance(lease, Lease)
    with pytest.raises(AttributeError):
        lease.expires_at = 0  # type: ignore[misc]

"""LeaseKeeper, the lease logic every exchange shares, against an in-process exchange that does
Vault's arithmetic (TTL, max_ttl cap, 500 "past the max TTL", batch tokens), real token files
rotated as the kubelet does, and an injected clock: a simulated day takes milliseconds."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import jwt
import pytest

from conftest import FakeClock, wait_for
from sa_token import TokenSource
from sa_token._hub import HUB
from sa_token._lease import GRACE_RANGE, RENEW_FRACTION, ExchangeError, Grant, LeaseKeeper
from sa_token._token import Token
from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer

AUD = "vault"


@dataclass(frozen=True)
class Cred:
    n: int
    created: float
    secret: str = field(repr=False, default="s.secret")


class FakeExchange:
    """Vault's lease arithmetic in process: a login grants ``min(ttl, max_ttl)``; a renewal
    grants ``min(ttl, what is left of max_ttl)`` in whole seconds, and past it answers 500."""

    def __init__(self, clock: FakeClock, *, ttl: float, max_ttl: float, renewable: bool = True) -> None:
        self.clock = clock
        self.ttl, self.max_ttl, self.renewable = ttl, max_ttl, renewable
        self.logins: list[str] = []  # jti of each projected token sent
        self.renew_calls = 0
        self.fail: Optional[str] = None  # "transient" or "reject": the next calls fail so
        self.login_delay = 0.0
        self._lock = threading.Lock()

    def login(self, token: Token) -> Grant[Cred]:
        if self.login_delay:
            time.sleep(self.login_delay)
        with self._lock:
            self.logins.append(str(token.claims["jti"]))
            n = len(self.logins)
        assert self.clock() < token.expires_at.timestamp(), "an expired projected token was sent"  # type: ignore[union-attr]
        self._maybe_fail("log in")
        return Grant(Cred(n, self.clock()), min(self.ttl, self.max_ttl), self.renewable)

    def renew(self, credential: Cred) -> Grant[Cred]:
        self.renew_calls += 1
        self._maybe_fail("renew")
        if not self.renewable:
            raise self.error("batch tokens cannot be renewed", reason="rejected")
        left = math.floor(credential.created + self.max_ttl - self.clock())
        if left <= 0:
            raise self.error("past the max TTL, cannot renew", reason="rejected")
        return Grant(credential, min(self.ttl, left), True)

    def error(self, message: str, *, reason: str, transient: bool = False) -> ExchangeError:
        return ExchangeError(message, reason=reason, transient=transient)

    def _maybe_fail(self, what: str) -> None:
        if self.fail == "transient":
            raise self.error(f"cannot {what}: Vault is sealed", reason="unavailable", transient=True)
        if self.fail == "reject":
            raise self.error(f"cannot {what}: permission denied", reason="rejected")


@dataclass
class World:
    clock: FakeClock
    issuer: TokenIssuer
    volume: ProjectedVolume
    kubelet: Kubelet
    source: TokenSource
    lifetime: float

    def rotate(self) -> str:
        token = self.kubelet.rotate(now=self.clock.now, expiration_seconds=self.lifetime)
        self.source.reload()  # no inotify here (watch=False): the source reads at once
        # Subscribers (the keeper's `rotated`) run in the source's own delivery thread: wait
        # until it has delivered this token, as the keeper's background thread would.
        subs = self.source._subscribers
        assert wait_for(lambda: subs._worker is None), "the subscribers were never told of the rotation"
        return str(jwt.decode(token, options={"verify_signature": False})["jti"])

    def rotate_if_due(self) -> None:
        """The kubelet: a new token at 80% of the current one's lifetime."""
        tok = self.source.current()
        assert tok.rotation_due_at is not None
        if self.clock.now >= tok.rotation_due_at.timestamp():
            self.rotate()


def make_world(tmp_path: Path, issuer: TokenIssuer, clock: FakeClock, lifetime: float) -> World:
    volume = ProjectedVolume(tmp_path / "tokens")
    kubelet = Kubelet(volume, issuer, audiences=[AUD], namespace="payments", service_account="payments")
    kubelet.rotate(now=clock.now, expiration_seconds=lifetime)
    source = TokenSource(volume.token_path, audience=AUD, clock=clock, watch=False)
    return World(clock, issuer, volume, kubelet, source, lifetime)


@pytest.fixture
def world(tmp_path: Path, token_issuer: TokenIssuer, clock: FakeClock) -> World:
    w = make_world(tmp_path, token_issuer, clock, 3600)
    yield w  # type: ignore[misc]
    w.source.close()


def keeper(world: World, exchange: FakeExchange, *, bound: bool = False, seed: int = 1,
           backoff_max: float = 300.0) -> LeaseKeeper[Cred]:
    return LeaseKeeper(world.source, exchange, name="fake", renewal_needs_login_token=bound,
                       clock=world.clock, rng=random.Random(seed), background=False, backoff_max=backoff_max)


def run(world: World, k: LeaseKeeper[Cred], seconds: float, *, check_every: float = 60.0) -> None:
    """Drive the keeper through ``seconds`` of simulated time; readers ask every ``check_every``
    seconds and must always get a valid lease."""
    end = world.clock.now + seconds
    next_check = world.clock.now
    while world.clock.now < end:
        world.rotate_if_due()
        delay = k.step()
        if world.clock.now >= next_check:
            lease = k.current()
            assert lease.valid(world.clock.now)
            next_check += check_every
        world.clock.advance(max(0.001, min(delay, next_check - world.clock.now, end - world.clock.now)))


# ----------------------------------------------------------------------- schedule ---------
def test_renews_at_about_two_thirds_of_the_ttl(world: World) -> None:
    ex = FakeExchange(world.clock, ttl=60, max_ttl=3600)
    k = keeper(world, ex)
    lease = k.current()
    t0 = world.clock.now
    assert lease.expires_at == t0 + 60 and lease.renewable and not lease.relogin
    low, high = 60 * (RENEW_FRACTION + GRACE_RANGE[0] / 3), 60 * (RENEW_FRACTION + GRACE_RANGE[1] / 3)
    assert low <= lease.refresh_at - t0 < high  # 42 s to 44 s: Vault's lifetime watcher
    world.clock.advance(k.step())  # sleeps until then
    assert world.clock.now == lease.refresh_at and ex.renew_calls == 0
    k.step()
    assert ex.renew_calls == 1 and k.renewals == 1 and k.logins == 1
    assert k.current().expires_at == world.clock.now + 60


def test_jitter_spreads_pods_apart(world: World) -> None:
    points = set()
    for seed in range(20):
        ex = FakeExchange(world.clock, ttl=3600, max_ttl=86400)
        points.add(round(keeper(world, ex, seed=seed).current().refresh_at - world.clock.now))
    assert len(points) >= 10 and min(points) >= 2520 and max(points) < 2640


def test_a_simulated_day_logs_in_as_the_lease_arithmetic_says(world: World) -> None:
    # 1 h TTL, 24 h max_ttl: renewals every ~42-44 min; the renewal that finds less than an hour
    # of max_ttl left is capped, and the login follows before the max_ttl ends. Over one day:
    # the first login and one more, however the jitter falls; never a login per request.
    ex = FakeExchange(world.clock, ttl=3600, max_ttl=86400)
    k = keeper(world, ex)
    run(world, k, 86400, check_every=10.0)
    assert k.logins == len(ex.logins) == 2
    assert 86400 / (3600 * (RENEW_FRACTION + GRACE_RANGE[1] / 3)) - 2 <= k.renewals <= 86400 / 2400
    assert ex.renew_calls == k.renewals  # no renewal was refused: the cap was seen coming


def test_a_capped_renewal_leads_to_a_login_before_max_ttl(world: World) -> None:
    ex = FakeExchange(world.clock, ttl=60, max_ttl=150)
    k = keeper(world, ex)
    t0 = world.clock.now
    first = k.current()
    while k.logins == 1:
        world.clock.advance(k.step())
        k.step()
        assert k.current().valid(world.clock.now)
    assert world.clock.now < t0 + 150  # before the first credential's max_ttl ran out
    assert k.current().credential.n == 2 and first.credential.n == 1
    assert ex.renew_calls == k.renewals == 3  # 60, 60, then 21 s (capped), never the 500


def test_a_refused_renewal_logs_in_at_once(world: World) -> None:
    ex = FakeExchange(world.clock, ttl=60, max_ttl=3600)
    k = keeper(world, ex)
    world.clock.advance(k.step())
    ex.fail = "reject"
    k.step()  # renewal refused, then the login fails too: still the old lease, a retry later
    assert ex.renew_calls == 1 and len(ex.logins) == 2 and k.current().credential.n == 1
    ex.fail = None
    world.clock.advance(k.step())
    k.step()
    assert k.current().credential.n == 3 and k.logins == 2


def test_a_batch_token_is_never_renewed(world: World) -> None:
    ex = FakeExchange(world.clock, ttl=60, max_ttl=60, renewable=False)
    k = keeper(world, ex)
    run(world, k, 600, check_every=1.0)
    assert ex.renew_calls == 0
    assert 600 / 44 <= k.logins <= 600 / 42 + 1  # a login at each 70-73% point


# ----------------------------------------------------------------------- failures ---------
def test_unavailable_keeps_the_lease_and_backs_off_with_jitter(world: World, caplog: pytest.LogCaptureFixture) -> None:
    ex = FakeExchange(world.clock, ttl=3600, max_ttl=86400)
    k = keeper(world, ex, backoff_max=60.0)
    world.clock.advance(k.step())
    lease = k.current()
    ex.fail = "transient"
    delays = []
    for _ in range(8):
        delays.append(k.step())
        world.clock.advance(delays[-1])
    for n, d in enumerate(delays):  # 1, 2, 4, 8... s capped at 60 s, each times [0.5, 1.5)
        base = min(60.0, 2.0**n)
        assert 0.5 * base <= d <= min(60.0, 1.5 * base)
    assert delays[-1] >= 30 and len(set(delays)) == 8
    assert k.current() is lease and len(ex.logins) == 1  # kept while valid, no login tried
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "keeping the current credential" in warnings[0]

    world.rotate()
    world.clock.advance(lease.expires_at - world.clock.now)  # the lease runs out while down
    before = len(ex.logins)
    if world.clock.now < k._plan.retry_at:  # inside the backoff: the error at once, no login
        with pytest.raises(ExchangeError) as info:
            k.current()
        assert info.value.transient and len(ex.logins) == before
    world.clock.advance(k.step())
    ex.fail = None
    k.step()  # the retry logs in
    assert k.current().credential.n == len(ex.logins) and k.current().valid(world.clock.now)
    assert any("recovered" in r.getMessage() for r in caplog.records[-2:])


def test_readers_never_wait_for_a_renewal(world: World) -> None:
    ex = FakeExchange(world.clock, ttl=600, max_ttl=86400)
    k = LeaseKeeper(world.source, ex, name="fake", clock=world.clock, background=False)
    world.clock.advance(k.step())
    gate = threading.Event()
    original = ex.renew

    def slow_renew(cred: Cred) -> Grant[Cred]:
        gate.wait(10)
        return original(cred)

    ex.renew = slow_renew  # type: ignore[method-assign]
    renewer = threading.Thread(target=k.step)
    renewer.start()
    assert wait_for(k._work.locked)
    t = time.monotonic()
    for _ in range(1000):
        k.current()
    assert time.monotonic() - t < 0.5  # answered while the renewal hangs
    gate.set()
    renewer.join()
    assert k.renewals == 1


@pytest.mark.parametrize("how", ["expired", "refused"])
def test_32_threads_cause_one_login(world: World, how: str) -> None:
    ex = FakeExchange(world.clock, ttl=60, max_ttl=3600)
    k = keeper(world, ex)
    stale = k.current()
    if how == "expired":
        world.clock.advance(61)
    ex.login_delay = 0.2
    barrier = threading.Barrier(32)
    got = []

    def reader() -> None:
        barrier.wait()
        got.append(k.current() if how == "expired" else k.replace(stale))

    threads = [threading.Thread(target=reader) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ex.logins) == 2 and len(got) == 32 and {g.generation for g in got} == {2}


# ----------------------------------------------------------------------- projected token --
def test_after_a_rotation_the_kubernetes_method_logs_in_with_the_new_token(
    tmp_path: Path, token_issuer: TokenIssuer, clock: FakeClock
) -> None:
    w = make_world(tmp_path, token_issuer, clock, 600)
    ex = FakeExchange(clock, ttl=3600, max_ttl=86400)
    k = keeper(w, ex, bound=True)
    first = k.current()
    # Renewals would outlive the 10 min projected token: the next action is at most at its end.
    assert first.refresh_at == first.login_token.expires_at.timestamp() - 30  # type: ignore[union-attr]
    clock.advance(480)  # the kubelet's 80%
    new_jti = w.rotate()
    assert math.isfinite(k._plan.rotation_at) and k._plan.rotation_at - clock.now <= 5.0
    clock.advance(k.step())
    k.step()
    assert ex.logins[-1] == new_jti and k.logins == 2
    # Over a day: one login per rotation, no more (OpenBao revokes a renewal made after the
    # login-time token expired, so there is no cheaper way).
    rotations = w.kubelet.rotations
    run(w, k, 86400)
    assert k.logins == 2 + (w.kubelet.rotations - rotations)
    w.source.close()


def test_retries_never_renew_past_the_login_token_limit(
    tmp_path: Path, token_issuer: TokenIssuer, clock: FakeClock
) -> None:
    # OpenBao revokes the Vault token when a renewal comes after the login-time projected token
    # expired: a renewal retried after a failure must not slip past the limit either. The
    # projected token (600 s) was minted 495 s ago: the limit (its expiry less 30 s) falls 75 s
    # after the login, just after the first renewal is due (70-73 s with a 100 s TTL).
    w = make_world(tmp_path, token_issuer, clock, 600)
    w.kubelet.rotate(now=clock.now - 495, expiration_seconds=600)
    w.source.reload()
    ex = FakeExchange(clock, ttl=100, max_ttl=86400)
    k = keeper(w, ex, bound=True)
    lease = k.current()
    limit = lease.login_token.expires_at.timestamp() - 30  # type: ignore[union-attr]
    assert lease.refresh_at < limit and not lease.relogin  # a renewal is due before the limit
    ex.fail = "transient"  # and fails: the retries back off past the limit
    calls_at_limit = None
    while clock.now < limit + 20:
        delay = k.step()
        if clock.now >= limit and calls_at_limit is None:
            calls_at_limit = ex.renew_calls
        clock.advance(max(delay, 0.25))
    assert calls_at_limit is not None and calls_at_limit >= 1
    assert ex.renew_calls == calls_at_limit  # none after the limit
    assert k.current() is lease  # still valid (until login + 100 s): kept


def test_an_expired_projected_token_is_never_sent(
    tmp_path: Path, token_issuer: TokenIssuer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    w = make_world(tmp_path, token_issuer, clock, 600)
    ex = FakeExchange(clock, ttl=60, max_ttl=60, renewable=False)  # must log in every ~43 s
    k = keeper(w, ex)
    clock.advance(601)  # the kubelet stopped: the token expired
    for _ in range(5):  # the FakeExchange asserts it is never handed an expired token
        clock.advance(min(k.step(), 30))
    assert ex.logins == ex.logins[:1]
    waits = [r for r in caplog.records if "waiting for the kubelet to rotate" in r.getMessage()]
    assert len(waits) == 1 and waits[0].levelno == logging.WARNING
    assert "expired" in waits[0].getMessage()
    with pytest.raises(ExchangeError) as info:
        k.current()  # the Vault token ran out too: now the typed error
    assert info.value.reason == "projected-token-expired" and str(w.volume.token_path) in str(info.value)
    new_jti = w.rotate()  # the kubelet is back
    k.step()
    assert ex.logins[-1] == new_jti and k.current().valid(clock.now)


# ----------------------------------------------------------------------- fork -------------
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_logs_in_for_its_own_credential(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    clock = time.time
    w = make_world(tmp_path, token_issuer, FakeClock(), 3600)
    w.source.close()
    source = TokenSource(w.volume.token_path, audience=AUD)
    ex = FakeExchange(clock, ttl=600, max_ttl=3600)  # type: ignore[arg-type]
    k = LeaseKeeper(source, ex, name="fake")
    parent = k.current()
    ex.login_delay = 0.3  # the child's own login is in flight while it serves the inherited one
    r, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            inherited = k.peek()
            at_once = k.current()  # the parent's credential, at once: nothing waits
            ok = wait_for(lambda: k.logins == 1, timeout=5)  # in the background
            own = k.current()
            report = {
                "inherited_owned": inherited.owned if inherited else None,
                "at_once": at_once.credential.n,
                "logged_in": ok,
                "own_n": own.credential.n,
                "own_owned": own.owned,
                "planned": HUB.stats()["deadlines"] >= 1,  # its next renewal, on the hub's heap
            }
            os.write(wfd, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(r) as f:
        report = json.loads(f.read() or "{}")
    os.waitpid(pid, 0)
    assert report == {"inherited_owned": False, "at_once": 1, "logged_in": True, "own_n": 2,
                      "own_owned": True, "planned": True}
    assert k.current() is parent and parent.owned  # the parent is untouched
    k.close()
    source.close()


def test_the_wall_clock_is_read_at_each_call_so_freezegun_works(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    freezegun = pytest.importorskip("freezegun")
    # freezegun scans every loaded module when it starts; the kubernetes clients resolve their
    # models lazily on attribute access (pydantic, which rejects a FakeDatetime): skip them.
    lazy = ["kubernetes", "kubernetes_asyncio"]
    with freezegun.freeze_time("2030-01-01 00:00:00", ignore=lazy) as frozen:
        volume = ProjectedVolume(tmp_path / "tokens")
        Kubelet(volume, token_issuer, audiences=[AUD]).rotate(expiration_seconds=7200)
        with TokenSource(volume.token_path, audience=AUD, watch=False) as source:
            ex = FakeExchange(time.time, ttl=600, max_ttl=86400)  # type: ignore[arg-type]
            k = LeaseKeeper(source, ex, name="fake", background=False)
            lease = k.current()
            assert lease.expires_at == time.time() + 600
            frozen.tick(445)  # past 70-73% of the TTL, in frozen time
            assert k.current() is lease  # readers are not kept waiting: the step renews
            assert 0.7 * 600 <= k.step() < 0.74 * 600 and k.renewals == 1
            assert k.current().expires_at == time.time() + 600
            frozen.tick(300)
            assert k.step() > 0 and k.renewals == 1  # nothing due yet
            k.close()

"""The house redesign (issue 20): the guarantees it gives by construction, each with a test that
fails without it."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from conftest import wait_for
from sa_token import TokenSource
from sa_token._flow import BearerFlow, Reply
from sa_token.testing import TokenIssuer

AUD = "redesign"


def _write(path: Path, value: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(value)
    tmp.replace(path)


# ----------------------------------------------------------------------- the 401 flow ------
@pytest.mark.parametrize("offset", [0.0, 30 * 86400.0, -3 * 86400.0])
def test_a_401_rereads_a_rotated_file_whatever_the_source_s_clock(
    tmp_path: Path, token_issuer: TokenIssuer, offset: float
) -> None:
    """The bug of issue 20: a source with a ``clock=`` ahead of real time never re-read after a
    401 (the flow stamped the request with time.time(), the source compared its own clock)."""
    now = [time.time() + offset]
    path = tmp_path / "token"
    _write(path, token_issuer.issue(audiences=[AUD], now=now[0]))
    src = TokenSource(path, audience=AUD, clock=lambda: now[0], watch=False)
    try:
        attempt = BearerFlow(src, client="test").attempt(None)
        assert attempt is not None
        sent = attempt.step()
        assert sent is not None and sent.value == src.token()
        fresh_value = token_issuer.issue(audiences=[AUD], now=now[0])
        _write(path, fresh_value)  # rotated; no watch: only the 401 makes the source look
        fresh = attempt.step(Reply())
        assert fresh is not None and fresh.value == fresh_value
        assert attempt.step(Reply()) is None  # one retry per request
    finally:
        src.close()


def test_a_burst_of_401s_on_one_token_rereads_the_file_once(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    """invalidate_if is a compare-and-swap on the token that was sent: 50 requests rejected with
    the same token cause one re-read, not 50 (client-go's ResetTokenOlderThan, without clocks)."""
    path = tmp_path / "token"
    _write(path, token_issuer.issue(audiences=[AUD]))
    src = TokenSource(path, audience=AUD, watch=False)
    try:
        flow = BearerFlow(src, client="test")
        attempts = [flow.attempt(None) for _ in range(50)]
        sent = [a.step() for a in attempts if a is not None]
        assert len(sent) == 50
        reads = src.status().reads
        barrier = threading.Barrier(50)
        results: list[object] = []

        def rejected(i: int) -> None:
            barrier.wait()
            a = attempts[i]
            assert a is not None
            results.append(a.step(Reply()))

        threads = [threading.Thread(target=rejected, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [None] * 50  # the file holds the same token: nothing to retry with
        assert src.status().reads == reads + 1
    finally:
        src.close()


def test_invalidate_if_only_invalidates_the_token_it_names(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    path = tmp_path / "token"
    _write(path, token_issuer.issue(audiences=[AUD]))
    src = TokenSource(path, audience=AUD, watch=False)
    try:
        old = src.current()
        _write(path, token_issuer.issue(audiences=[AUD]))
        new = src.reload()
        assert src.invalidate_if(old) is False  # already replaced: nothing to do
        assert src.token_nowait() == new.value
        assert src.invalidate_if(new) is True
        assert src.token_nowait() is None  # the next token() re-reads
        assert src.token() == new.value
    finally:
        src.close()


# ----------------------------------------------------------------------- one error tree -----
def test_one_except_catches_every_exchange_failure() -> None:
    """One ExchangeError in sa_token.errors: Vault's and every cloud's errors subclass it (an
    ``except sa_token.aws.ExchangeError`` missed Vault before)."""
    import importlib

    import sa_token
    from sa_token import errors

    assert sa_token.ExchangeError is errors.ExchangeError
    assert issubclass(errors.ExchangeError, sa_token.TokenError)
    found = 0
    for module, names in [
        ("sa_token.vault", ["VaultLoginError"]),
        ("sa_token.aws", ["STSError", "ExchangeError"]),
        ("sa_token.google", ["STSError", "ExchangeError"]),
        ("sa_token.azure", ["EntraIDError", "ExchangeError"]),
        ("sa_token.alibabacloud", ["STSError", "ExchangeError"]),
    ]:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        for name in names:
            assert issubclass(getattr(mod, name), errors.ExchangeError), (module, name)
            found += 1
    assert found
    err = errors.ExchangeError("refused", status=403, code="AccessDenied", platform="aws", transient=False)
    assert (err.status, err.code, err.platform, err.transient, err.reason) == (
        403, "AccessDenied", "aws", False, "exchange-failed"
    )


# ----------------------------------------------------------------------- one clock ----------
def test_the_hub_sleeps_on_boottime_and_validity_uses_wall_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub's clock keeps counting through a suspension (CLOCK_BOOTTIME where the OS has
    it); the validity clock is time.time, looked up at each call."""
    from sa_token import _clock, _hub

    assert _hub._mono is _clock.mono
    if hasattr(time, "CLOCK_BOOTTIME"):
        assert abs(_clock.mono() - time.clock_gettime(time.CLOCK_BOOTTIME)) < 1.0
    monkeypatch.setattr(time, "time", lambda: 42.0)
    assert _clock.wall() == 42.0 and _clock.now(None) == 42.0 and _clock.now(lambda: 7.0) == 7.0


# ----------------------------------------------------------------------- the deadline heap --
def test_the_deadline_heap_answers_as_a_simple_model() -> None:
    """`Deadlines` against a dict model (slot -> due, plus a list of slotless entries) under
    random pushes, replacements, cancellations and pops: the same functions fire, in order, the
    live count and the next due time agree, and compaction keeps the heap within bounds."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import settings
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

    from sa_token._deadlines import Deadlines

    compact_min = 4  # reached within a run of 60 steps
    slots = st.integers(0, 7)
    times = st.integers(0, 50).map(float)

    class Model(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.real = Deadlines(compact_min=compact_min)
            self.slotted: dict[int, tuple[float, int]] = {}  # slot -> (due, order)
            self.free: list[tuple[float, int]] = []  # slotless (due, order)
            self.order = 0
            self.fired: list[int] = []

        def _fire(self, order: int) -> Any:
            return lambda: self.fired.append(order)

        @rule(due=times, slot=st.one_of(st.none(), slots))
        def push(self, due: float, slot: Optional[int]) -> None:
            self.order += 1
            self.real.push(due, self._fire(self.order), slot)
            if slot is None:
                self.free.append((due, self.order))
            else:
                self.slotted[slot] = (due, self.order)

        @rule(slot=slots)
        def cancel_it(self, slot: int) -> None:
            self.real.cancel(slot)
            self.slotted.pop(slot, None)

        @rule(slot=slots)
        def push_infinite(self, slot: int) -> None:  # an infinite delay only cancels
            self.real.push(math.inf, lambda: None, slot)
            self.slotted.pop(slot, None)

        @rule(now=times)
        def pop(self, now: float) -> None:
            self.fired = []
            for f in self.real.pop_due(now):
                f()
            entries = [e for e in list(self.slotted.values()) + self.free if e[0] <= now]
            expected = [order for _, order in sorted(entries)]
            assert self.fired == expected
            self.slotted = {s: e for s, e in self.slotted.items() if e[0] > now}
            self.free = [e for e in self.free if e[0] > now]

        @invariant()
        def agree(self) -> None:
            live = list(self.slotted.values()) + self.free
            assert len(self.real) == len(live)
            if live:
                assert self.real.next_due() <= min(d for d, _ in live)
            for slot, (due, _) in self.slotted.items():
                assert self.real.due_of(slot) == due
            assert self.real.size <= max(2 * len(live) + 1, len(live) + compact_min)

    assert hypothesis
    Model.TestCase.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
    Model.TestCase().runTest()


# ----------------------------------------------------------------------- the lease keeper ---
class _SlowExchange:
    """Answers a login 10 s (of the fake clock) after it was sent."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.logins = 0

    def login(self, token: Any) -> Any:
        from sa_token._lease import Grant

        self.logins += 1
        self.clock.advance(10)
        return Grant(f"cred-{self.logins}", 60, True)

    def renew(self, credential: Any) -> Any:
        from sa_token._lease import Grant

        return Grant(credential, 60, True)

    def error(self, message: str, *, reason: str, transient: bool = False) -> Any:
        from sa_token.errors import ExchangeError

        return ExchangeError(message, reason=reason, transient=transient)


def test_a_lease_expires_ttl_after_its_request_left(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    """The keeper counts the TTL from the clock read before the login was sent: an answer that
    took 10 s leaves 50 s of a 60 s lease, not 60 (the server's clock started at the request)."""
    from conftest import FakeClock
    from sa_token._lease import LeaseKeeper

    clock = FakeClock()
    path = tmp_path / "token"
    _write(path, token_issuer.issue(audiences=[AUD], now=clock.now))
    with TokenSource(path, audience=AUD, clock=clock, watch=False) as src:
        sent = clock.now
        k = LeaseKeeper(src, _SlowExchange(clock), name="slow", clock=clock, background=False)
        assert k.current().expires_at == sent + 60
        k.close()


def test_a_closed_keeper_lets_go_of_its_source(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    """close() ends the keeper's subscription (and its deadline): the source keeps no callback
    of it, and the hub no planned action."""
    from sa_token._hub import HUB
    from sa_token._lease import LeaseKeeper

    path = tmp_path / "token"
    _write(path, token_issuer.issue(audiences=[AUD]))

    with TokenSource(path, audience=AUD, watch=False) as src:
        def active() -> int:
            return sum(s.callback is not None for s in src._subscribers._subs)

        before, deadlines = active(), HUB.stats()["deadlines"]
        k = LeaseKeeper(src, _SlowExchange(type("C", (), {"advance": lambda self, s: None})()), name="k")
        assert active() == before + 1 and HUB.stats()["deadlines"] == deadlines + 1
        k.close()
        assert active() == before and HUB.stats()["deadlines"] == deadlines


def test_a_request_leaves_the_planned_re_read_to_the_watcher(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    """Within REQUEST_GRACE after a snapshot's re-read time, token() answers from memory (the
    watcher thread does the read); only once the thread is that late does a request read."""
    from conftest import FakeClock
    from sa_token._source import REQUEST_GRACE

    clock = FakeClock()
    path = tmp_path / "token"
    _write(path, token_issuer.issue(audiences=[AUD], now=clock.now, expiration_seconds=3600))
    with TokenSource(path, audience=AUD, clock=clock, watch=False, refresh_interval=60) as src:
        reads = src.status().reads
        clock.advance(60 + REQUEST_GRACE / 2)  # the re-read is due, the grace not yet over
        src.token()
        assert src.status().reads == reads
        clock.advance(REQUEST_GRACE)  # the watcher is later than the grace: the request reads
        src.token()
        assert src.status().reads == reads + 1


def test_sources_with_the_same_settings_share_one_read_one_snapshot_one_deadline(
    tmp_path: Path, token_issuer: TokenIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """O(1) rotations: 50 sources of one file with one set of settings are one view (one
    snapshot, one planned re-read); a rotation is one read for all of them; a source with other
    settings has a view of its own; a new source on the unchanged file reads nothing; and the
    view's deadline goes once its last source does, not before."""
    import gc

    from sa_token import _tokenfile
    from sa_token._hub import HUB

    reads: list[str] = []
    real = _tokenfile.read_token_file

    def counted(path: str, **kw: Any) -> Any:
        reads.append(path)
        return real(path, **kw)

    monkeypatch.setattr(_tokenfile, "read_token_file", counted)
    path = tmp_path / "token"
    _write(path, token_issuer.issue(audiences=[AUD]))
    time.sleep(0.06)  # beyond the kernel's coarse file clock: the read describes the file
    deadlines = HUB.stats()["deadlines"]
    same = [TokenSource(path, audience=AUD, watch=False) for _ in range(50)]
    other = TokenSource(path, audience=AUD, watch=False, refresh_interval=30)
    assert len(reads) == 1, "one read for 51 sources of an unchanged file"
    assert len({id(s._shared) for s in same}) == 1 and other._shared is not same[0]._shared
    assert HUB.stats()["deadlines"] == deadlines + 2  # one per view, not one per source
    new = token_issuer.issue(audiences=[AUD])
    _write(path, new)
    same[7].reload()
    assert len(reads) == 2 and all(s.token() == new for s in [*same, other])
    assert same[0]._snap is same[49]._snap
    for s in same[:-1]:
        s.close()
    del s
    assert HUB.stats()["deadlines"] == deadlines + 2, "the last source keeps the view's deadline"
    last = same.pop()
    same.clear()
    del last
    assert wait_for(lambda: gc.collect() == 0 and HUB.stats()["deadlines"] == deadlines + 1, timeout=5)
    other.close()
    assert HUB.stats()["deadlines"] == deadlines


def test_kubernetes_asyncio_lives_under_kubernetes_and_needs_no_kubernetes_package() -> None:
    """`sa_token.kubernetes.asyncio` is the module (the old `sa_token.kubernetes_asyncio` is the
    same object), and it imports with `kubernetes_asyncio` alone: `sa_token.kubernetes` loads
    the official client's names at first use, and only then says what to install."""
    import subprocess
    import sys

    code = """
import sys
sys.modules["kubernetes"] = None  # the official client is not installed
import sa_token.kubernetes.asyncio as new, sa_token.kubernetes_asyncio as old
assert new is old and new.ApiClient.__module__ == "sa_token.kubernetes.asyncio"
try:
    from sa_token.kubernetes import ApiClient
except ImportError as exc:
    print("hint:", exc)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'sa-token[kubernetes]'" in proc.stdout


def test_the_shared_rejection_backoff_doubles_to_a_minute_and_starts_again() -> None:
    """`_flow.Rejections` (kopf's logins use it): 1, 2, 4 ... 60 s while the same token keeps
    being rejected; nothing to wait for, and a fresh count, once a token was not rejected."""
    from sa_token._flow import Rejections

    r = Rejections()
    assert [r.delay(True) for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert r.delay(False) == 0 and r.delay(True) == 1


@pytest.mark.parametrize("columns", ["123", "", "0", "wide"])
def test_the_cli_finds_the_terminal_width_as_shutil_does(monkeypatch: pytest.MonkeyPatch, columns: str) -> None:
    """The help formatter's width comes without importing shutil, with its answer: COLUMNS
    when it is a positive number, else the terminal's width, else 80."""
    import os
    import shutil

    from sa_token.cli import _columns

    monkeypatch.setenv("COLUMNS", columns)
    assert _columns() == shutil.get_terminal_size().columns  # here: not a terminal
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=1: os.terminal_size((150, 40)))
    assert _columns() == shutil.get_terminal_size().columns  # a terminal 150 columns wide

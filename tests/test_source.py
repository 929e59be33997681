"""TokenSource behaviour, one test (at least) per promise of issue 2, on real files rewritten
exactly as the kubelet does, real inotify, injected clocks for expiry."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

import sa_token
from conftest import FakeClock, wait_for
from conftest import sa_token_warnings as warnings_of
from sa_token import (
    AudienceMismatchError,
    IssuerMismatchError,
    MalformedTokenError,
    TokenExpiredError,
    TokenFileError,
    TokenNotYetValidError,
    TokenSource,
)
from sa_token._hub import HUB
from sa_token._source import DEFAULT_LEEWAY, STALE_MARGIN
from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer
from sa_token.testing import inotify_instances as _inotify_fds

AUD = "vault"


@pytest.fixture
def vol(tmp_path: Path) -> ProjectedVolume:
    return ProjectedVolume(tmp_path / "vault-token")


@pytest.fixture
def kl(vol: ProjectedVolume, token_issuer: TokenIssuer) -> Kubelet:
    k = Kubelet(vol, token_issuer, audiences=[AUD], expiration_seconds=7200)
    k.rotate()
    return k


# ---------------------------------------------------------------- 1. constructor ------------


def test_constructor_reads_the_file_and_exposes_the_token(kl: Kubelet, vol: ProjectedVolume) -> None:
    with TokenSource(vol.token_path, audience=AUD) as src:
        assert src.token() == kl.current
        tok = src.current()
        assert tok.audiences == (AUD,)
        assert tok.namespace == "default" and tok.service_account == "default" and tok.pod == "app-0"
        assert tok.expires_at is not None and tok.lifetime is not None
        assert tok.lifetime.total_seconds() == 7200


def test_missing_file_fails_in_constructor_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "token"
    with pytest.raises(TokenFileError) as ei:
        TokenSource(path)
    assert str(path) in str(ei.value) and "does not exist" in str(ei.value)
    assert isinstance(ei.value, OSError) and ei.value.errno is not None
    assert HUB.watched_directories().get(str(path.parent)) is None  # nothing left armed


def test_malformed_file_fails_in_constructor(tmp_path: Path) -> None:
    p = tmp_path / "token"
    p.write_text("not-a-jwt")
    with pytest.raises(MalformedTokenError) as ei:
        TokenSource(p)
    assert str(p) in str(ei.value) and isinstance(ei.value, ValueError)


def test_wrong_audience_fails_in_constructor(kl: Kubelet, vol: ProjectedVolume) -> None:
    with pytest.raises(AudienceMismatchError) as ei:
        TokenSource(vol.token_path, audience="sts.amazonaws.com")
    msg = str(ei.value)
    assert str(vol.token_path) in msg and "'vault'" in msg and "sts.amazonaws.com" in msg
    assert kl.current is not None and kl.current not in msg


def test_one_of_several_audiences_suffices(kl: Kubelet, vol: ProjectedVolume) -> None:
    with TokenSource(vol.token_path, audience=["other", AUD]) as src:
        assert src.token() == kl.current


def test_issuer_must_match_when_given(kl: Kubelet, vol: ProjectedVolume, token_issuer: TokenIssuer) -> None:
    with TokenSource(vol.token_path, issuer=token_issuer.issuer):
        pass
    with pytest.raises(IssuerMismatchError) as ei:
        TokenSource(vol.token_path, issuer="https://elsewhere")
    assert "https://elsewhere" in str(ei.value)


def test_bad_options_are_rejected(kl: Kubelet, vol: ProjectedVolume) -> None:
    with pytest.raises(ValueError, match="refresh_interval"):
        TokenSource(vol.token_path, refresh_interval=0)
    with pytest.raises(ValueError, match="audience"):
        TokenSource(vol.token_path, audience=[])
    with pytest.raises(TypeError):
        TokenSource(vol.token_path, AUD)  # type: ignore[misc]  # options are keyword-only


# ---------------------------------------------------------------- 2. rotation by inotify ----


def test_kubelet_swap_is_seen_without_token_calls_and_token_does_no_io(
    kl: Kubelet, vol: ProjectedVolume, count_opens
) -> None:
    with TokenSource(vol.token_path, audience=AUD, refresh_interval=3600) as src:
        seen: list[str] = []
        src.subscribe(lambda t: seen.append(t.value))
        new = kl.rotate()
        assert wait_for(lambda: seen == [new], timeout=2)  # the watcher thread read it
        opens = count_opens(vol.token_path)
        for _ in range(10000):
            assert src.token() == new
        assert opens.count == 0  # the hot path never touches the file


def test_many_rotations_each_picked_up(kl: Kubelet, vol: ProjectedVolume) -> None:
    with TokenSource(vol.token_path, audience=AUD, refresh_interval=3600) as src:
        for _ in range(20):
            new = kl.rotate()
            assert wait_for(lambda: src.token() == new, timeout=2)  # noqa: B023


def test_plain_file_rewritten_in_place(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    p = tmp_path / "token"
    p.write_text(token_issuer.issue(audiences=[AUD]) + "\n")
    with TokenSource(p, audience=AUD, refresh_interval=3600) as src:
        new = token_issuer.issue(audiences=[AUD])
        with open(p, "w") as f:  # in place: same inode, IN_CLOSE_WRITE
            f.write(new)
        assert wait_for(lambda: src.token() == new, timeout=2)


def test_plain_file_replaced_by_rename(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    p = tmp_path / "token"
    p.write_text(token_issuer.issue(audiences=[AUD]))
    with TokenSource(p, audience=AUD, refresh_interval=3600) as src:
        new = token_issuer.issue(audiences=[AUD])
        (tmp_path / ".token.tmp").write_text(new)
        os.rename(tmp_path / ".token.tmp", p)  # IN_MOVED_TO token
        assert wait_for(lambda: src.token() == new, timeout=2)


def test_nested_path_inside_a_projected_volume(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    vol = ProjectedVolume(tmp_path / "vol", token_key="tokens/vault/token")
    vol.write({"tokens/vault/token": token_issuer.issue(audiences=[AUD])})
    path = tmp_path / "vol" / "tokens" / "vault" / "token"
    with TokenSource(path, audience=AUD, refresh_interval=3600) as src:
        new = token_issuer.issue(audiences=[AUD])
        vol.rotate(new)
        assert wait_for(lambda: src.token() == new, timeout=2)


def test_symlink_from_elsewhere_into_a_projected_volume(
    tmp_path: Path, kl: Kubelet, vol: ProjectedVolume
) -> None:
    link = tmp_path / "app" / "token"
    link.parent.mkdir()
    link.symlink_to(vol.token_path)
    with TokenSource(link, audience=AUD, refresh_interval=3600) as src:
        new = kl.rotate()
        assert wait_for(lambda: src.token() == new, timeout=2)


# ---------------------------------------------------------------- 3. one watcher -----------


def test_one_inotify_instance_and_constant_threads_for_many_sources(
    tmp_path: Path, token_issuer: TokenIssuer
) -> None:
    kubelets = []
    for i in range(5):
        k = Kubelet(ProjectedVolume(tmp_path / f"v{i}"), token_issuer, audiences=[AUD])
        k.rotate()
        kubelets.append(k)
    first = TokenSource(kubelets[0].volume.token_path, audience=AUD)
    threads = threading.active_count()
    sources = [TokenSource(k.volume.token_path, audience=AUD) for k in kubelets for _ in range(20)]
    try:
        assert threading.active_count() == threads  # no thread per source, none per volume
        assert _inotify_fds() == 1
        for k in kubelets:
            new = k.rotate()
            mine = [s for s in sources if s.path == str(k.volume.token_path)]
            assert wait_for(lambda: all(s.token() == new for s in mine), timeout=2)  # noqa: B023
    finally:
        for s in [first, *sources]:
            s.close()
    for k in kubelets:
        assert str(k.volume.directory) not in HUB.watched_directories()


def test_sources_on_one_file_share_one_read_per_rotation(
    kl: Kubelet, vol: ProjectedVolume, count_opens
) -> None:
    sources = [TokenSource(vol.token_path, audience=AUD, refresh_interval=3600) for _ in range(10)]
    try:
        kl.rotate()  # settle: the first generation's events are done
        assert wait_for(lambda: all(s.token() == kl.current for s in sources))
        opens = count_opens(vol.token_path)
        for _ in range(5):
            new = kl.rotate()
            assert wait_for(lambda: all(s.token() == new for s in sources))  # noqa: B023
        time.sleep(0.05)  # let any straggling event land before counting
        assert opens.count == 5
    finally:
        for s in sources:
            s.close()


def test_sources_with_different_audiences_share_the_file_but_validate_separately(
    vol: ProjectedVolume, token_issuer: TokenIssuer
) -> None:
    vol.rotate(token_issuer.issue(audiences=["a", "b"]))
    with TokenSource(vol.token_path, audience="a") as a, TokenSource(vol.token_path, audience="b") as b:
        only_a = token_issuer.issue(audiences=["a"])
        vol.rotate(only_a)
        assert wait_for(lambda: a.token() == only_a)
        assert b.token() != only_a  # b keeps its last good token: the new one is not for it


# ---------------------------------------------------------------- 4. fallback timer ---------


def test_timer_rereads_in_background_without_events_or_calls(kl: Kubelet, vol: ProjectedVolume) -> None:
    with TokenSource(vol.token_path, audience=AUD, watch=False, refresh_interval=0.2) as src:
        assert not src.watching
        heard: list[str] = []
        src.subscribe(lambda t: heard.append(t.value))
        new = kl.rotate()
        assert wait_for(lambda: heard == [new], timeout=3)


def test_timer_rereads_at_the_rotation_point(vol: ProjectedVolume, token_issuer: TokenIssuer) -> None:
    lifetime = 600
    # issued so that 80% of its lifetime is reached 0.5-1.5 s from now (iat is whole seconds)
    vol.rotate(token_issuer.issue(audiences=[AUD], expiration_seconds=lifetime, now=time.time() - 0.8 * lifetime + 1.5))
    with TokenSource(vol.token_path, audience=AUD, watch=False, refresh_interval=3600) as src:
        heard: list[str] = []
        src.subscribe(lambda t: heard.append(t.value))
        new = token_issuer.issue(audiences=[AUD])
        vol.rotate(new)
        assert src.current().value != new  # no event, no interval: only the rotation point helps
        assert wait_for(lambda: heard == [new], timeout=4)


def test_token_after_a_missed_deadline_rereads_before_answering(
    kl: Kubelet, vol: ProjectedVolume, clock: FakeClock, count_opens
) -> None:
    with TokenSource(vol.token_path, audience=AUD, watch=False, refresh_interval=300, clock=clock) as src:
        new = kl.rotate()
        opens = count_opens(vol.token_path)
        clock.advance(299)
        assert src.token() != new and opens.count == 0
        clock.advance(2)
        assert src.token() == new and opens.count == 1


# ---------------------------------------------------------------- 5/6. validation, expiry ---


def test_exp_is_strict_and_expired_token_is_never_handed_out(
    vol: ProjectedVolume, token_issuer: TokenIssuer, clock: FakeClock
) -> None:
    tok = token_issuer.issue(audiences=[AUD], expiration_seconds=600, now=clock.now)
    vol.rotate(tok)
    with TokenSource(vol.token_path, audience=AUD, watch=False, clock=clock) as src:
        clock.advance(599.5)
        assert src.token() == tok
        clock.advance(0.5)  # now == exp: expired (exp is exclusive, no leeway)
        with pytest.raises(TokenExpiredError) as ei:
            src.token()
        msg = str(ei.value)
        assert str(vol.token_path) in msg and "ago" in msg and "kubelet" in msg and tok not in msg
        assert ei.value.expires_at is not None and ei.value.path == str(vol.token_path)
        with pytest.raises(TokenExpiredError):
            src.current()
        fresh = token_issuer.issue(audiences=[AUD], expiration_seconds=600, now=clock.now)
        vol.rotate(fresh)
        # No valid token to hand out: token() looks at the file (a stat) before raising, so the
        # rotated file is served at once, even with watch=False and a retry a delay away.
        assert src.token() == fresh


def test_expired_token_in_file_at_start_is_refused_by_token_not_constructor(
    vol: ProjectedVolume, token_issuer: TokenIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    vol.rotate(token_issuer.issue(audiences=[AUD], expiration_seconds=600, now=time.time() - 700))
    with TokenSource(vol.token_path, audience=AUD) as src:
        assert any("expired" in m for m in warnings_of(caplog))
        with pytest.raises(TokenExpiredError):
            src.token()


def test_nbf_and_iat_get_the_leeway(vol: ProjectedVolume, token_issuer: TokenIssuer, clock: FakeClock) -> None:
    vol.rotate(token_issuer.issue(audiences=[AUD], now=clock.now + DEFAULT_LEEWAY - 1))
    with TokenSource(vol.token_path, audience=AUD, watch=False, clock=clock) as src:
        assert src.token()  # within the leeway: fine
    vol.rotate(token_issuer.issue(audiences=[AUD], now=clock.now + DEFAULT_LEEWAY + 5))
    with TokenSource(vol.token_path, audience=AUD, watch=False, clock=clock) as src:
        with pytest.raises(TokenNotYetValidError, match="clock"):
            src.token()
        clock.advance(10)
        assert src.token()


# ---------------------------------------------------------------- 7. last known good --------


@pytest.mark.parametrize(
    ("bad", "kind"),
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"garbage", "not a JWT"),
        (b"eyJhbGciOiJSUzI1NiJ9.eyJleHAiOi.c2ln", "not a valid JWT"),
        (None, "does not exist"),
    ],
)
def test_failed_reread_keeps_last_good_token_and_warns_once(
    kl: Kubelet, vol: ProjectedVolume, bad: bytes | None, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = kl.current
    with TokenSource(vol.token_path, audience=AUD, refresh_interval=3600) as src:
        heard: list[object] = []
        src.subscribe(heard.append)
        if bad is None:
            os.unlink(vol.data_dir / "token")  # the file vanishes inside the current generation
        else:
            vol.write({"token": bad})
        with pytest.raises(sa_token.TokenError):
            src.reload()  # (a deletion inside the generation raises no event on the volume root)
        assert any(kind in m for m in warnings_of(caplog))
        for _ in range(3):
            with pytest.raises(sa_token.TokenError):
                src.reload()  # explicit reloads report the failure...
            assert src.token() == good  # ...but the source keeps serving the good token
        assert len([m for m in warnings_of(caplog) if kind in m]) == 1
        assert heard == []
        assert good is not None and all(good not in m for m in warnings_of(caplog))
        new = kl.rotate()  # the next good rotation is picked up
        assert wait_for(lambda: src.token() == new)


def test_wrong_audience_on_reread_keeps_last_good(
    kl: Kubelet, vol: ProjectedVolume, token_issuer: TokenIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    with TokenSource(vol.token_path, audience=AUD) as src:
        vol.rotate(token_issuer.issue(audiences=["other"]))
        assert wait_for(lambda: any("audience" in m for m in warnings_of(caplog)))
        assert src.token() == kl.current


def test_kept_token_raises_once_it_expires(
    vol: ProjectedVolume, token_issuer: TokenIssuer, clock: FakeClock
) -> None:
    vol.rotate(token_issuer.issue(audiences=[AUD], expiration_seconds=600, now=clock.now))
    with TokenSource(vol.token_path, audience=AUD, clock=clock) as src:
        good = src.token()
        vol.write({"token": "garbage"})
        assert wait_for(lambda: src.status().last_error is not None)
        clock.advance(300)
        assert src.token() == good
        clock.advance(301)
        with pytest.raises(TokenExpiredError, match="last re-read failed"):
            src.token()


# ---------------------------------------------------------------- 8/9. stale, no exp --------


def test_one_warning_when_the_kubelet_does_not_rotate(
    vol: ProjectedVolume, token_issuer: TokenIssuer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    vol.rotate(token_issuer.issue(audiences=[AUD], expiration_seconds=3600, now=clock.now))
    with TokenSource(vol.token_path, audience=AUD, watch=False, clock=clock) as src:
        clock.advance(0.8 * 3600 + STALE_MARGIN - 5)
        src.token()
        assert not [m for m in warnings_of(caplog) if "not rotating" in m]
        clock.advance(10)
        for _ in range(3):
            src.reload()
            clock.advance(1)
        stale = [m for m in warnings_of(caplog) if "not rotating" in m]
        assert len(stale) == 1 and "138689" in stale[0] and str(vol.token_path) in stale[0]


def test_extended_token_rotation_point_comes_from_warnafter(token_issuer: TokenIssuer) -> None:
    tok = sa_token._token.parse_token(token_issuer.issue(expiration_seconds=3607, extend=True))
    assert tok.lifetime is not None and tok.lifetime.total_seconds() == 3607
    assert tok.expires_at is not None and tok.issued_at is not None
    assert (tok.expires_at - tok.issued_at).days == 365
    assert tok.rotation_due_at is not None
    assert (tok.rotation_due_at - tok.issued_at).total_seconds() == pytest.approx(0.8 * 3607)


def test_token_without_exp_is_accepted_as_non_expiring(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    legacy = token_issuer.sign(
        {"iss": "kubernetes/serviceaccount", "sub": "system:serviceaccount:default:legacy",
         "kubernetes.io/serviceaccount/namespace": "default",
         "kubernetes.io/serviceaccount/service-account.name": "legacy"}
    )
    p = tmp_path / "token"
    p.write_text(legacy)
    with TokenSource(p) as src:
        tok = src.current()
        assert tok.expires_at is None and tok.lifetime is None and tok.remaining() is None
        assert tok.namespace == "default" and tok.service_account == "legacy"
        assert src.token() == legacy
        assert "expires_at=None" in repr(src)


# ---------------------------------------------------------------- 10. threads ---------------


def test_many_threads_always_get_a_complete_valid_token_during_rotations(
    kl: Kubelet, vol: ProjectedVolume, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = [kl.mint() for _ in range(100)]  # minted up front: RSA signing is slow under contention
    minted = {kl.current, *tokens}
    bad: list[str] = []
    stop = threading.Event()
    calls: list[int] = []
    # Hand the GIL over often so the rotating thread is not starved by eight spinning readers.
    monkeypatch.setattr(sys, "getswitchinterval", sys.getswitchinterval)
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)

    with TokenSource(vol.token_path, audience=AUD) as src:

        def reader() -> None:
            n = 0
            while not stop.is_set():
                if src.token() not in minted:
                    bad.append("unknown token")
                n += 1
                if n % 500 == 0:
                    time.sleep(0)  # yield now and then, like a real request handler would
            calls.append(n)

        threads = [threading.Thread(target=reader) for _ in range(8)]
        try:
            for t in threads:
                t.start()
            for tok in tokens:
                vol.rotate(tok)
            assert wait_for(lambda: src.token() == tokens[-1])
        finally:
            stop.set()
            for t in threads:
                t.join()
            sys.setswitchinterval(old)
    assert bad == [] and sum(calls) > 1000


def test_at_most_one_thread_rereads_at_a_time(kl: Kubelet, vol: ProjectedVolume, count_opens) -> None:
    with TokenSource(vol.token_path, audience=AUD, refresh_interval=3600) as src:
        src.invalidate()
        opens = count_opens(vol.token_path)
        barrier = threading.Barrier(16)
        results: list[str] = []

        def call() -> None:
            barrier.wait()
            results.append(src.token())

        threads = [threading.Thread(target=call) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [kl.current] * 16
        assert opens.count == 1  # single flight: one read for sixteen callers


# ---------------------------------------------------------------- 11. fork ------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_child_sources_keep_rotating_after_fork(kl: Kubelet, vol: ProjectedVolume) -> None:
    with TokenSource(vol.token_path, audience=AUD, refresh_interval=3600) as src:
        r, w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: wait for the parent's rotation, report what we serve
            try:
                os.close(r)
                os.read(go_r, 1)
                new = (vol.directory / "expected").read_text()
                ok = wait_for(lambda: src.token() == new, timeout=5)
                sees = src.token() == new
                os.write(w, b"ok" if ok and sees and threading.active_count() >= 2 else b"stale")
            finally:
                os._exit(0)
        os.close(w)
        new = kl.rotate()
        (vol.directory / "expected").write_text(new)
        os.write(go_w, b"x")
        verdict = os.read(r, 16)
        os.waitpid(pid, 0)
        assert verdict == b"ok"
        newer = kl.rotate()  # and the parent still rotates too
        assert wait_for(lambda: src.token() == newer)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_keeps_its_deadline_numbering(kl: Kubelet, vol: ProjectedVolume) -> None:
    """The child inherits the parent's deadline heap, replaced entries included. Entries are
    told apart by their sequence number, so the child must go on numbering from the parent's:
    restarting at 0 would give a new deadline the number of a replaced one (which would then
    fire in its place, and the live one be dropped as replaced)."""
    with TokenSource(vol.token_path, audience=AUD, refresh_interval=3600) as src:
        for _ in range(5):
            src.reload()  # replaced entries, left in the heap until due
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                with HUB.lock:
                    in_heap = max(e[1] for e in HUB.deadlines._heap)
                    upcoming = next(HUB.deadlines._seq)
                os.write(w, b"ok" if upcoming > in_heap else b"reused")
            finally:
                os._exit(0)
        os.close(w)
        verdict = os.read(r, 16)
        os.waitpid(pid, 0)
        assert verdict == b"ok"


# ---------------------------------------------------------------- 12. content ---------------


def test_whitespace_around_the_token_is_stripped(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    tok = token_issuer.issue(audiences=[AUD])
    p = tmp_path / "token"
    p.write_text(f"\n  {tok}\r\n\t")
    with TokenSource(p) as src:
        assert src.token() == tok


def test_huge_file_is_rejected_without_loading_it(tmp_path: Path) -> None:
    p = tmp_path / "token"
    with open(p, "wb") as f:
        f.truncate(50 * 1024 * 1024)  # sparse: 50 MiB without writing them
    with pytest.raises(TokenFileError, match="larger than any JWT"):
        TokenSource(p)


# ---------------------------------------------------------------- API details ---------------


def test_invalidate_older_than(kl: Kubelet, vol: ProjectedVolume, count_opens) -> None:
    with TokenSource(vol.token_path, audience=AUD, refresh_interval=3600) as src:
        opens = count_opens(vol.token_path)
        read_at = src.read_at
        src.invalidate(older_than=read_at - 1)  # read after that: kept
        src.token()
        assert opens.count == 0
        src.invalidate(older_than=read_at + 1)  # read before that: forgotten
        assert src.token() == kl.current and opens.count == 1
        assert src.read_at > read_at


def test_subscribe_and_unsubscribe(kl: Kubelet, vol: ProjectedVolume) -> None:
    with TokenSource(vol.token_path, audience=AUD) as src:
        got: list[sa_token.Token] = []
        unsubscribe = src.subscribe(got.append)
        first = kl.rotate()
        assert wait_for(lambda: [t.value for t in got] == [first])
        unsubscribe()
        second = kl.rotate()
        assert wait_for(lambda: src.token() == second)
        assert [t.value for t in got] == [first]


def test_a_failing_subscriber_is_logged_and_others_still_run(
    kl: Kubelet, vol: ProjectedVolume, caplog: pytest.LogCaptureFixture
) -> None:
    with TokenSource(vol.token_path, audience=AUD) as src:
        got: list[str] = []

        def boom(_: sa_token.Token) -> None:
            raise RuntimeError("subscriber bug")

        src.subscribe(boom)
        src.subscribe(lambda t: got.append(t.value))
        new = kl.rotate()
        assert wait_for(lambda: got == [new])
        assert any("subscriber" in r.getMessage() for r in caplog.records)


def test_close_stops_watching(kl: Kubelet, vol: ProjectedVolume) -> None:
    src = TokenSource(vol.token_path, audience=AUD)
    assert HUB.watched_directories().get(str(vol.directory)) is True
    src.close()
    src.close()  # idempotent
    assert str(vol.directory) not in HUB.watched_directories()
    assert src.closed
    with pytest.raises(RuntimeError, match="closed"):
        src.token()


@pytest.mark.asyncio
async def test_atoken(kl: Kubelet, vol: ProjectedVolume) -> None:
    with TokenSource(vol.token_path, audience=AUD) as src:
        assert await src.atoken() == kl.current
        src.invalidate()
        assert src.token_nowait() is None  # would need a read
        assert await src.atoken() == kl.current  # read in a worker thread
        assert src.token_nowait() == kl.current


def test_repr_and_str_never_show_the_token(kl: Kubelet, vol: ProjectedVolume) -> None:
    with TokenSource(vol.token_path, audience=AUD) as src:
        tok = src.current()
        signature = tok.value.split(".")[2]
        for text in (repr(src), str(src), repr(tok), str(tok), repr(kl), repr(vol)):
            assert tok.value not in text and signature not in text
        assert "vault" in repr(src) and str(vol.token_path) in repr(src)


def test_public_names() -> None:
    assert sorted(sa_token.__all__) == sorted(
        [
            "DEFAULT_TOKEN_PATH", "AudienceMismatchError", "CABundle", "CAFileError", "IssuerMismatchError",
            "ConfigurationError", "ExchangeError", "ThreadStartError", "MalformedTokenError",
            "Token", "TokenError", "TokenExpiredError", "TokenFileError", "TokenNotYetValidError",
            "TokenSource", "TokenStatus", "TokenValidationError", "__version__",
        ]
    )
    assert sa_token.DEFAULT_TOKEN_PATH == "/var/run/secrets/kubernetes.io/serviceaccount/token"

"""Issue 9: the core's guarantees, each reproduced failure of the two-thread core as a test.

Every test here failed on the core it replaced (one timer thread switching a clock-free fast path
off; seven timing fields written from three contexts) and passes on the snapshot core. The
numbers in the docstrings are the issue's findings. Findings 10 (the watch limit) and the
thread-death cases are in test_faults.py, next to the other real faults.

The tests use the public API, and the hub's registry (`HUB`) only to look at watches.
"""

from __future__ import annotations

import base64
import gc
import logging
import os
import signal
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import trustme
from freezegun import freeze_time

import conftest
import sa_token._tokenfile as source_module
from conftest import gate_opens, wait_for
from sa_token import (
    CABundle,
    MalformedTokenError,
    TokenExpiredError,
    TokenNotYetValidError,
    TokenSource,
)
from sa_token._hub import HUB
from sa_token._token import parse_token
from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer
from sa_token.testing.pytest_plugin import TEST_AUDIENCE

AUD = TEST_AUDIENCE


def _now() -> datetime:
    return datetime.now(tz=timezone.utc)


def _warnings(caplog: pytest.LogCaptureFixture, containing: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and containing in r.getMessage()]


# ------------------------------------------------------------------------------------ 1 ---
def test_close_racing_a_reread_leaves_the_source_closed(kubelet: Kubelet, projected_volume: ProjectedVolume) -> None:
    """(1) close() while a re-read is under way: the re-read must not bring the closed source
    back to life; past exp, token() raises RuntimeError (closed), never returns the token."""
    kubelet.rotate(expiration_seconds=600, now=time.time() - 590)  # expires in 10 s
    src = TokenSource(projected_volume.token_path, audience=AUD, watch=False)
    with gate_opens(src.path) as gate:
        reader = threading.Thread(target=src.reload)
        reader.start()
        assert gate.entered.wait(5)  # the re-read holds the file's lock, inside the read
        closer = threading.Thread(target=src.close)
        closer.start()
        time.sleep(0.05)  # close() gets as far as it can before the re-read finishes
        gate.released.set()
        reader.join(5)
        closer.join(5)
    assert src.closed
    with freeze_time(_now() + timedelta(seconds=20)), pytest.raises(RuntimeError, match="closed"):
        src.token()


# ------------------------------------------------------------------------------------ 2 ---
@pytest.mark.parametrize("misbehaviour", ["blocks", "exits"])
def test_a_misbehaving_subscriber_delays_no_other_source(
    misbehaviour: str, tmp_path: Path, token_issuer: TokenIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    """(2) A subscriber that blocks (a network call) or raises SystemExit: other sources still
    get their rotations in the background (no token() call has to do the read)."""
    vols = {name: ProjectedVolume(tmp_path / name) for name in ("a", "b")}
    for v in vols.values():
        v.rotate(token_issuer.issue(audiences=[AUD]))
    a, b = (TokenSource(v.token_path, audience=AUD, refresh_interval=3600) for v in vols.values())
    release = threading.Event()

    def bad(_: object) -> None:
        if misbehaviour == "blocks":
            release.wait(30)
        else:
            sys.exit(3)

    a.subscribe(bad)
    try:
        vols["a"].rotate(token_issuer.issue(audiences=[AUD]))
        time.sleep(0.1)  # the subscriber of a is running (blocked, or has exited)
        for _ in range(2):
            new_b = token_issuer.issue(audiences=[AUD])
            vols["b"].rotate(new_b)
            assert wait_for(lambda t=new_b: b.token() == t, timeout=2), "b's rotation was not picked up"
        if misbehaviour == "exits":  # contained, and said
            assert any(r.exc_info and r.exc_info[0] is SystemExit for r in caplog.records)
    finally:
        release.set()
        a.close()
        b.close()


# ------------------------------------------------------------------------------------ 3 ---
def test_freezegun_tick_past_exp_is_refused_at_once(projected_volume: ProjectedVolume, token_issuer: TokenIssuer) -> None:
    """(3) Under freezegun, time moved past exp: token() raises at once (it used to serve the
    token until the *real* clock reached the deadline, while current() raised)."""
    with freeze_time(_now()) as frozen:
        projected_volume.rotate(token_issuer.issue(audiences=[AUD], expiration_seconds=3600))
        with TokenSource(projected_volume.token_path, audience=AUD) as src:
            src.token()
            frozen.tick(3601)
            with pytest.raises(TokenExpiredError):
                src.token()
            with pytest.raises(TokenExpiredError):
                src.current()


# ------------------------------------------------------------------------------------ 4 ---
def test_a_failed_constructor_does_not_unwatch_one_in_progress(
    projected_volume: ProjectedVolume, token_issuer: TokenIssuer
) -> None:
    """(4) A constructor that fails (wrong audience) while another one on the same path is in
    progress: the good source keeps its watch and gets the next rotation's event."""
    projected_volume.rotate(token_issuer.issue(audiences=[AUD]))
    path = projected_volume.token_path
    made: dict[str, Any] = {}

    def build(name: str, audience: str) -> None:
        try:
            made[name] = TokenSource(path, audience=audience, refresh_interval=3600)
        except Exception as exc:
            made[name] = exc

    with gate_opens(os.path.abspath(path)) as gate:
        bad = threading.Thread(target=build, args=("bad", "someone-else"))
        bad.start()
        assert gate.entered.wait(5)  # the bad constructor is reading, holding the file's lock
        good = threading.Thread(target=build, args=("good", AUD))
        good.start()
        time.sleep(0.1)  # the good one registered and waits for the lock
        gate.released.set()
        bad.join(5)
        good.join(5)
    assert isinstance(made["bad"], Exception)
    src = made["good"]
    assert isinstance(src, TokenSource)
    try:
        assert src.watching
        new = token_issuer.issue(audiences=[AUD])
        projected_volume.rotate(new)
        assert wait_for(lambda: src.token() == new, timeout=2), "the good source got no event"
    finally:
        src.close()


# ------------------------------------------------------------------------------------ 5 ---
def test_sources_dropped_while_others_are_built_leave_no_registration(
    projected_volume: ProjectedVolume, token_issuer: TokenIssuer
) -> None:
    """(5) Sources dropped without close() while others are constructed on the same path, in
    two threads, many times: afterwards nothing stays registered or watched, and a rotation
    is read once per live file, not once per orphan."""
    projected_volume.rotate(token_issuer.issue(audiences=[AUD]))
    path = str(projected_volume.token_path)
    directory = str(projected_volume.directory)
    stop = threading.Event()

    def drop() -> None:
        while not stop.is_set():
            s = TokenSource(path)
            s.cycle = s  # type: ignore[attr-defined]  # freed by the cyclic collector, at any time
            del s

    dropper = threading.Thread(target=drop)
    dropper.start()
    try:
        end = time.monotonic() + 2.0  # sources come and go: at times the file has none at all
        while time.monotonic() < end:
            TokenSource(path).close()
    finally:
        stop.set()
        dropper.join(10)
    assert not dropper.is_alive(), "a TokenSource() took more than 10 s"
    # Collect until the cycles are gone: gc.collect() returns at once, collecting nothing, while
    # another thread's collection is under way (its finalizers poke the watcher's pipe, and that
    # write lets this thread run). Then nothing may stay watched.
    assert wait_for(lambda: gc.collect() is not None and directory not in HUB.watched_directories(), timeout=5), (
        HUB.watched_directories()
    )
    assert path not in HUB.files
    live = TokenSource(path, audience=AUD)
    try:
        opens = conftest.OpenCounter(path)
        new = token_issuer.issue(audiences=[AUD])
        projected_volume.rotate(new)
        assert wait_for(lambda: live.token() == new)
        time.sleep(0.1)
        assert opens.count == 1  # one read for the one live file: no orphan reads it again
    finally:
        live.close()


# ------------------------------------------------------------------------------------ 6 ---
def test_a_failing_file_is_read_once_per_retry_delay(
    projected_volume: ProjectedVolume, token_issuer: TokenIssuer, clock: conftest.FakeClock
) -> None:
    """(6) Past a re-read deadline, with the file missing, token() serves the last good token
    and does not read the file on every call (it used to: 3 opens per call)."""
    tok = token_issuer.issue(audiences=[AUD], now=clock.now)
    projected_volume.rotate(tok)
    src = TokenSource(projected_volume.token_path, audience=AUD, watch=False, clock=clock, refresh_interval=60)
    try:
        os.unlink(projected_volume.token_path)
        clock.advance(61)
        opens = conftest.OpenCounter(src.path)
        for _ in range(1000):
            assert src.token() == tok
        assert opens.count <= 3  # one read (up to three attempts for a missing file)
        clock.advance(source_module.FAILED_READ_RETRY)
        src.token()
        assert opens.count <= 6  # and one more after the retry delay
    finally:
        src.close()


# ------------------------------------------------------------------------------------ 7 ---
def _nested_jwt(where: str) -> str:
    nested = ("[" * 5000 + "]" * 5000).encode()
    normal = {"header": b'{"alg":"RS256"}', "payload": b'{"aud":["x"]}'}
    normal[where] = nested
    part = [base64.urlsafe_b64encode(normal[k]).rstrip(b"=").decode() for k in ("header", "payload")]
    return f"{part[0]}.{part[1]}.{'A' * 342}"


@pytest.mark.parametrize("where", ["header", "payload"])
def test_deeply_nested_json_is_a_malformed_token(
    where: str, projected_volume: ProjectedVolume, token_issuer: TokenIssuer
) -> None:
    """(7) A header or payload of 5000 nested arrays: `MalformedTokenError`, not a
    RecursionError (pyjwt 2.6 - 2.14 let it escape); the source keeps the last good token."""
    garbage = _nested_jwt(where)
    with pytest.raises(MalformedTokenError):
        parse_token(garbage)
    good = token_issuer.issue(audiences=[AUD])
    projected_volume.rotate(good)
    with TokenSource(projected_volume.token_path, audience=AUD, watch=False) as src:
        projected_volume.rotate(garbage)
        with pytest.raises(MalformedTokenError):
            src.reload()
        assert src.token() == good


# ------------------------------------------------------------------------------------ 8 ---
def test_cabundle_without_a_watch_is_usable_in_a_child_forked_mid_refresh(tmp_path: Path) -> None:
    """(8) A CABundle with watch=False, forked while another thread is inside its refresh()
    (holding its lock): the child's first use must not deadlock on the parent's lock."""
    ca_path = tmp_path / "ca.crt"
    ca_path.write_bytes(trustme.CA().cert_pem.bytes())
    bundle = CABundle(ca_path, watch=False, check_interval=0)
    ca_path.write_bytes(trustme.CA().cert_pem.bytes())  # changed: the next refresh reads it
    with gate_opens(str(ca_path)) as gate:
        t = threading.Thread(target=bundle.refresh)
        t.start()
        assert gate.entered.wait(5)  # inside refresh(), holding the bundle's lock
        pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            code = 1
            try:
                conftest.OPEN_GATES.clear()  # the gate is the parent's business
                signal.alarm(5)  # a deadlock ends the child with SIGALRM
                bundle.refresh()
                bundle.ssl_context()
                code = 0
            finally:
                os._exit(code)
        gate.released.set()
        t.join(5)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"


# ------------------------------------------------------------------------------------ 9 ---
def test_the_same_failure_warns_once_though_its_message_changes(
    projected_volume: ProjectedVolume,
    token_issuer: TokenIssuer,
    clock: conftest.FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """(9) A re-read that keeps finding an expired token: the message says "expired 15s ago",
    then "22s ago"...; the warning is given once (keyed by cause, not by text)."""
    projected_volume.rotate(token_issuer.issue(audiences=[AUD], now=clock.now))
    with TokenSource(projected_volume.token_path, audience=AUD, watch=False, clock=clock) as src:
        # expired 10 s ago: the message says "10s ago", then "17s ago"...
        projected_volume.rotate(token_issuer.issue(audiences=[AUD], now=clock.now - 610, expiration_seconds=600))
        for _ in range(4):
            with pytest.raises(TokenExpiredError):
                src.reload()
            clock.advance(7)
        assert len(_warnings(caplog, "re-read failed")) == 1


def test_a_stale_token_without_jti_warns_once(
    projected_volume: ProjectedVolume,
    token_issuer: TokenIssuer,
    clock: conftest.FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """(9) A token that passed its rotation point, without ``jti``, re-read again and again:
    one "not rotated" warning (it used to be keyed by the Python object's id)."""
    claims = token_issuer.claims(audiences=[AUD], now=clock.now, expiration_seconds=3600)
    del claims["jti"]
    projected_volume.rotate(token_issuer.sign(claims))
    with TokenSource(projected_volume.token_path, audience=AUD, watch=False, clock=clock) as src:
        clock.advance(0.8 * 3600 + 200)  # past the rotation point and the kubelet's margin
        for _ in range(4):
            src.reload()
            clock.advance(30)
        assert len(_warnings(caplog, "was not rotated")) == 1


# ----------------------------------------------------------------------------------- 11 ---
def test_a_symlink_to_a_plain_file_elsewhere_follows_its_rewrites(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    """(11) The token path is a symlink to a plain file in another directory, rewritten by a
    sidecar (write a temporary file, rename it over): each rewrite is picked up by inotify."""
    sidecar = tmp_path / "sidecar"
    sidecar.mkdir()
    target = sidecar / "token"
    target.write_text(token_issuer.issue(audiences=[AUD]))
    app = tmp_path / "app"
    app.mkdir()
    (app / "token").symlink_to(target)
    with TokenSource(app / "token", audience=AUD, refresh_interval=3600) as src:
        assert src.watching
        for i in range(2):
            new = token_issuer.issue(audiences=[AUD])
            tmp = sidecar / f".token.{i}"
            tmp.write_text(new)
            tmp.rename(target)
            assert wait_for(lambda t=new: src.token() == t, timeout=2), "the rewrite was not picked up"


# ----------------------------------------------------------------------------------- 12 ---
def _strings_in(value: object, depth: int = 0) -> list[str]:
    """The strings a locals printer would show for ``value`` (its repr, and what it contains)."""
    if depth > 4:
        return []
    if isinstance(value, (str, bytes)):
        return [value.decode("latin-1") if isinstance(value, bytes) else value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for x in (k, v) for s in _strings_in(x, depth + 1)]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [s for v in value for s in _strings_in(v, depth + 1)]
    try:
        return [repr(value)]
    except Exception:
        return []


def assert_no_token_in_locals(tb: TracebackType | None, token: str) -> None:
    """Sentry, loguru and ``pytest -l`` print the locals of every frame of a traceback: none of
    sa-token's frames may hold the token (or a third of it)."""
    probes = [token, *(p for p in token.split(".") if len(p) > 8)]
    while tb is not None:
        frame = tb.tb_frame
        if "sa_token" in frame.f_code.co_filename:
            for name, value in frame.f_locals.items():
                for text in _strings_in(value):
                    assert not any(p in text for p in probes), (
                        f"{frame.f_code.co_name}() holds the token in {name!r}"
                    )
        tb = tb.tb_next


@pytest.mark.parametrize("problem", ["expired", "not-yet-valid"])
def test_no_token_in_the_locals_of_a_raised_traceback(
    problem: str, projected_volume: ProjectedVolume, token_issuer: TokenIssuer, clock: conftest.FakeClock
) -> None:
    """(12) token() raising TokenExpiredError / TokenNotYetValidError, and the constructor
    raising for a malformed file: no sa-token frame on the traceback holds the token."""
    start = clock.now + (0 if problem == "expired" else 3600)
    tok = token_issuer.issue(audiences=[AUD], now=start, expiration_seconds=600)
    projected_volume.rotate(tok)
    with TokenSource(projected_volume.token_path, audience=AUD, watch=False, clock=clock) as src:
        if problem == "expired":
            clock.advance(601)
        error = TokenExpiredError if problem == "expired" else TokenNotYetValidError
        with pytest.raises(error) as ei:
            src.token()
        assert_no_token_in_locals(ei.tb, tok)
        with pytest.raises(error) as ei:
            src.current()
        assert_no_token_in_locals(ei.tb, tok)
    cut = tok[:-40]  # a truncated token: its signature is too short
    projected_volume.rotate(cut)
    with pytest.raises(MalformedTokenError) as mei:
        TokenSource(projected_volume.token_path, audience=AUD)
    assert_no_token_in_locals(mei.tb, cut)


# ----------------------------------------------------------------------------------- 13 ---
def test_background_rereads_keep_following_their_deadlines(
    projected_volume: ProjectedVolume, token_issuer: TokenIssuer
) -> None:
    """(13) Without inotify, every re-read schedules the next one: three rotations in a row are
    each picked up by the watcher thread (no token() call), not just the first."""
    projected_volume.rotate(token_issuer.issue(audiences=[AUD]))
    with TokenSource(projected_volume.token_path, audience=AUD, watch=False, refresh_interval=0.2) as src:
        heard: list[str] = []
        src.subscribe(lambda t: heard.append(t.value))
        for _ in range(3):
            new = token_issuer.issue(audiences=[AUD])
            projected_volume.rotate(new)
            assert wait_for(lambda t=new: heard and heard[-1] == t, timeout=2)


def test_rereads_replace_their_deadline_instead_of_piling_up(
    projected_volume: ProjectedVolume, token_issuer: TokenIssuer, tmp_path: Path
) -> None:
    """(13) Each re-read plans the next one. The plan it replaces must not stay in the watcher's
    heap until its own due time: at a kubelet's 5 ms rotations that was ~700 entries (120 KB)
    every 4 s, freed only minutes later. The heap stays within twice the live deadlines, and
    live deadlines (this source's and another's) survive the compactions and still fire."""
    from sa_token._deadlines import COMPACT_MIN as _COMPACT_MIN

    other_volume = ProjectedVolume(tmp_path / "other")
    for vol in (projected_volume, other_volume):
        vol.rotate(token_issuer.issue(audiences=[AUD]))
    opts: dict[str, Any] = {"audience": AUD, "watch": False, "refresh_interval": 0.5}
    with TokenSource(projected_volume.token_path, **opts) as src, \
            TokenSource(other_volume.token_path, **opts) as other:
        heard: list[str] = []
        src.subscribe(lambda t: heard.append(t.value))
        other.subscribe(lambda t: heard.append(t.value))
        for _ in range(3000):
            src.reload()  # a read: it replaces the source's planned re-read
        stats = HUB.stats()
        live = stats["deadlines"]
        assert stats["heap_entries"] <= live + max(_COMPACT_MIN, live + 1), stats
        new = [token_issuer.issue(audiences=[AUD]) for _ in range(2)]
        projected_volume.rotate(new[0])  # no event (watch=False): only the planned re-reads see them
        other_volume.rotate(new[1])
        assert wait_for(lambda: sorted(heard) == sorted(new), timeout=3), "a live deadline was lost"
    assert HUB.stats()["deadlines"] <= live - 2, "close() cancels the sources' deadlines"


def test_a_failed_read_is_retried_early(
    projected_volume: ProjectedVolume, token_issuer: TokenIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(13) A failed re-read (garbage mid-write) is retried after FAILED_READ_RETRY, not at the
    next refresh interval: the fixed file is picked up in the background."""
    monkeypatch.setattr(source_module, "FAILED_READ_RETRY", 0.2)
    projected_volume.rotate(token_issuer.issue(audiences=[AUD]))
    with TokenSource(projected_volume.token_path, audience=AUD, watch=False, refresh_interval=3600) as src:
        heard: list[str] = []
        src.subscribe(lambda t: heard.append(t.value))
        projected_volume.rotate("garbage")
        with pytest.raises(MalformedTokenError):
            src.reload()
        new = token_issuer.issue(audiences=[AUD])
        projected_volume.rotate(new)  # no event (watch=False), no refresh for an hour
        assert wait_for(lambda: heard == [new], timeout=2), "the retry after the failed read did not happen"


def test_an_inotify_queue_overflow_rereads_every_file(
    projected_volume: ProjectedVolume, token_issuer: TokenIssuer
) -> None:
    """(13) The kernel's event queue overflows (fs.inotify.max_queued_events, 16384): the events
    are lost, IN_Q_OVERFLOW says so, and every watched file is re-read. Made for real: the
    watcher thread is held while 20000 events pile up, and a rotation is lost among them."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    projected_volume.rotate(token_issuer.issue(audiences=[AUD]))
    with TokenSource(projected_volume.token_path, audience=AUD, refresh_interval=3600) as src:
        noise = projected_volume.directory / "noise"
        new = token_issuer.issue(audiences=[AUD])
        with HUB.lock:  # the watcher thread waits here before it reads its next events
            time.sleep(0.05)
            for _ in range(limit // 2 + 100):  # IN_CREATE + IN_DELETE: past the queue's size
                noise.touch()
                noise.unlink()
            projected_volume.rotate(new)  # its events do not fit in the queue any more
        assert wait_for(lambda: src.token() == new, timeout=3), "the overflow did not cause a re-read"

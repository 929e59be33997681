"""What a newcomer passes by mistake, and what the core says back (issue 10, findings 3, 4, 5;
issue 9: the namespace reader and a FIFO). The CLI's side of the same findings is in test_cli.py.

Each error is typed, names the file (bounded, escaped) and the cause, and never holds a token.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest

from _reliability import run_child, world_dir
from sa_token import CABundle, CAFileError, TokenFileError, TokenSource
from sa_token._fmt import MAX_SHOWN_PATH
from sa_token._incluster import read_namespace
from sa_token._token import parse_token
from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer, assert_no_token
from sa_token.testing.pytest_plugin import TEST_AUDIENCE

AUD = TEST_AUDIENCE


# ------------------------------------------------------------------ 3: a token, not a path ---
def test_a_token_passed_as_the_path_is_recognised_and_not_echoed(kubelet: Kubelet) -> None:
    """`TokenSource(open(p).read())`: the error says "looks like a token, not a path" and holds
    no part of the token (it used to hold all of it: "File name too long")."""
    token = kubelet.current or ""
    for wrong in (token, token + "\n", f"/var/run/{token}"):
        with pytest.raises(TokenFileError) as ei:
            TokenSource(wrong)
        assert ei.value.reason == "not-a-path"
        assert "looks like a token, not a path" in str(ei.value)
        assert_no_token(str(ei.value), [token])
        assert_no_token(repr(ei.value), [token])
        assert ei.value.path is None and ei.value.filename is None  # not kept on the error either
    with pytest.raises(CAFileError) as ci:
        CABundle(token)
    assert ci.value.reason == "not-a-path"
    assert_no_token(str(ci.value), [token])


def test_every_path_in_a_message_is_bounded_and_escaped(tmp_path: Path) -> None:
    long = tmp_path / ("d" * 200) / ("e" * 200) / "token"
    with pytest.raises(TokenFileError) as ei:
        TokenSource(long)
    text = str(ei.value)
    assert len(text) < MAX_SHOWN_PATH + 300 and "[...]" in text and "token" in text
    evil = tmp_path / "a\x1b[2Jb" / "token"
    with pytest.raises(TokenFileError) as ei:
        TokenSource(evil)
    assert "\x1b" not in str(ei.value) and "a\\x1b[2Jb" in str(ei.value)


# ------------------------------------------------------------ 4: numbers beyond the calendar ---
@pytest.mark.parametrize(
    ("claims", "remaining", "lifetime"),
    [
        ({"exp": 1e14}, timedelta.max, timedelta.max),  # beyond timedelta's range: clamped
        ({"exp": 2**62}, timedelta.max, timedelta.max),  # beyond datetime's range too
        ({"exp": -1e14, "iat": -2e14, "nbf": -2e14}, timedelta.min, timedelta.max),
    ],
)
def test_numeric_claims_that_overflow_never_raise(
    token_issuer: TokenIssuer, claims: dict[str, float], remaining: timedelta, lifetime: timedelta
) -> None:
    """`Token.remaining()`, `Token.lifetime` and the datetimes: `exp=1e14` parses (it is a
    number of seconds), and nothing computed from it raises OverflowError or ValueError."""
    payload = token_issuer.claims(audiences=[AUD])
    payload.update(claims)
    tok = parse_token(token_issuer.sign(payload))
    assert tok.remaining() == remaining
    assert tok.lifetime == lifetime
    assert tok.expires_at is not None
    assert tok.rotation_due_at is not None
    repr(tok)


@pytest.mark.parametrize("claim", ["iat", "nbf", "exp"])
def test_a_claim_beyond_any_time_is_malformed(token_issuer: TokenIssuer, claim: str) -> None:
    """1.8e38 seconds is no time at all: refused when the token is parsed, typed, with a message
    that says why (and not "iat is 2078876157407407552976501728083968.0d in the future")."""
    payload = token_issuer.claims(audiences=[AUD])
    payload[claim] = 1.8e38
    from sa_token import MalformedTokenError

    with pytest.raises(MalformedTokenError, match=f"'{claim}' must be a number of seconds, got a number out of range"):
        parse_token(token_issuer.sign(payload))


# ------------------------------------------------------------------ 5: a subPath mount ---
_SUBPATH = """
from sa_token import TokenSource
src = TokenSource(P["mounted"], audience=P["aud"])
done(token_ok=src.token() == P["token"])
"""


def _can_bind_mount() -> bool:
    try:
        return subprocess.run(["unshare", "-Urm", "true"], check=False, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(not _can_bind_mount(), reason="needs unshare -Urm (a mount namespace) to bind-mount a file")
def test_a_subpath_mount_warns_at_construction(token_issuer: TokenIssuer) -> None:
    """A projected token mounted with ``subPath``: the kubelet bind-mounts the file itself, and
    never updates it. Made for real (a bind mount in a private mount namespace): one warning at
    construction, naming the file and when the token stops working."""
    d = world_dir()
    try:
        vol = ProjectedVolume(d / "vol")
        token = token_issuer.issue(audiences=[AUD])
        vol.rotate(token)
        app = d / "app"
        app.mkdir()
        mounted = app / "vault-token"
        mounted.touch()
        real = os.path.realpath(vol.token_path)  # the kubelet binds the file in the generation dir
        prefix = ["unshare", "-Urm", "sh", "-c", f'mount --bind "{real}" "{mounted}" && exec "$@"', "sh"]
        result = run_child(_SUBPATH, {"mounted": str(mounted), "aud": AUD, "token": token}, prefix=prefix)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert result["token_ok"]
    warnings = [m for level, m in result["logs"] if level == "WARNING"]  # type: ignore[attr-defined]
    assert len(warnings) == 1, warnings
    assert "subPath mount" in warnings[0] and str(mounted) in warnings[0] and "will not rotate" in warnings[0]


def test_a_plain_file_outside_a_volume_is_not_called_a_subpath(
    tmp_path: Path, token_issuer: TokenIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain file (a sidecar's, a test's) is not a mount point: no warning."""
    path = tmp_path / "token"
    path.write_text(token_issuer.issue(audiences=[AUD]))
    with TokenSource(path, audience=AUD):
        pass
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ------------------------------------------------------------------ the namespace file ---
def test_a_fifo_at_the_namespace_path_does_not_hang(tmp_path: Path) -> None:
    """`load_incluster_config` used to hang forever when the namespace path was a FIFO."""
    fifo = tmp_path / "namespace"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(TokenFileError) as ei:
        read_namespace(fifo)
    assert time.monotonic() - t0 < 1.0
    assert str(fifo) in str(ei.value) and ei.value.reason in ("not-a-file", "empty")


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty"), (b"Not_A_Label\n", "malformed"), (b"x" * 5000, "too-large"), (b"default\n", None)],
)
def test_the_namespace_reader_says_what_is_wrong(tmp_path: Path, content: bytes, reason: str | None) -> None:
    path = tmp_path / "namespace"
    path.write_bytes(content)
    if reason is None:
        assert read_namespace(path) == "default"
        return
    with pytest.raises(TokenFileError) as ei:
        read_namespace(path)
    assert ei.value.reason == reason and str(path) in str(ei.value)
    with pytest.raises(TokenFileError) as ei:
        read_namespace(tmp_path / "missing")
    assert ei.value.reason == "missing" and "ServiceAccount token" in str(ei.value)


# ------------------------------------------------------------------ status() ---
def test_status_reports_what_the_source_knows_without_io(
    projected_volume: ProjectedVolume, token_issuer: TokenIssuer, count_opens: object
) -> None:
    from conftest import FakeClock, OpenCounter

    clock = FakeClock()
    tok = token_issuer.issue(audiences=[AUD], now=clock.now, expiration_seconds=3600)
    projected_volume.rotate(tok)
    with TokenSource(projected_volume.token_path, audience=AUD, clock=clock) as src:
        opens = OpenCounter(src.path)
        st = src.status()
        assert st.valid and st.reason is None and st.watching == "inotify" and not st.stale
        assert st.expires_at is not None and st.rotation_due_at is not None and st.last_error is None
        assert st.reads == 1 and st.failures == 0
        assert_no_token(repr(st), [tok])
        clock.advance(0.8 * 3600 + 200)  # past the rotation point and the kubelet's margin
        assert src.status().stale
        clock.advance(3600)
        st = src.status()
        assert not st.valid and st.reason == "expired"
        assert opens.count == 0  # status() reads nothing
    assert src.status().watching == "closed" and src.status().reason == "closed"

"""The fault matrix (issue 6): each test injects one fault for real and checks the outcome.

For every row: the token served stays valid, or a typed error from :mod:`sa_token.errors` names
the cause and the path (never the token); a failure is logged once, not per call; and the next
good rotation is picked up. Faults are injected into real projected volumes with the kubelet's
own ``..data`` swap, on real inotify; privilege drops, inotify exhaustion and a dying watcher
thread run in a child process so the test process is left intact.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import jwt
import pytest
from freezegun import freeze_time

from _reliability import (
    fd_count,
    file_with,
    inotify_watches,
    publish,
    run_child,
    segments_of,
    thread_names,
    world_dir,
)
from conftest import read_failures as _failures
from conftest import wait_for
from sa_token import (
    AudienceMismatchError,
    MalformedTokenError,
    TokenError,
    TokenExpiredError,
    TokenFileError,
    TokenNotYetValidError,
    TokenSource,
)
from sa_token._hub import HUB
from sa_token._tokenfile import FAILED_READ_RETRY
from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer
from sa_token.testing.pytest_plugin import TEST_AUDIENCE

AUD = TEST_AUDIENCE
# The uid the privilege-dropping scenarios run as ("nobody").
NOBODY = 65534
# A uid no other process uses, so exhausting its inotify instances (a per-user limit) cannot
# disturb anything else running on this machine as root.
INOTIFY_UID = 61234


def _limited(limit: str, value: int) -> list[str]:
    """A command prefix that runs the child in a new user namespace whose inotify ``limit``
    (``max_inotify_instances`` or ``max_inotify_watches``) is ``value``: a real limit, reached
    for real, without touching the machine's own (fs.inotify.* is per user namespace)."""
    return ["unshare", "-Ur", "sh", "-c", f'echo {value} > /proc/sys/user/{limit} && exec "$@"', "sh"]


def _can_limit_inotify() -> bool:
    import subprocess

    try:
        return (
            subprocess.run(
                [*_limited("max_inotify_watches", 2), "true"], check=False, capture_output=True, timeout=10
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        return False


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _assert_names(err: TokenError, path: str, cause: str, *secrets: str) -> None:
    """The error names the path and the cause, and contains no part of any token."""
    text = str(err)
    assert err.path == path
    assert path in text
    assert cause in text, text
    for secret in secrets:
        for part in segments_of(secret):
            assert part not in text


@pytest.fixture
def src(kubelet: Kubelet, projected_volume: ProjectedVolume) -> Iterator[TokenSource]:
    s = TokenSource(projected_volume.token_path, audience=AUD)
    yield s
    s.close()


# --------------------------------------------------------------------------- bad content ---
# Each builder gets the issuer and a good token; returns the bytes the broken generation holds.
Builder = Callable[[TokenIssuer, str], bytes]


def _signed(issuer: TokenIssuer, **claims: object) -> bytes:
    """A token signed by ``issuer`` whose claims are overridden with anything JSON can hold
    (``TokenIssuer.sign`` goes through pyjwt, which refuses a non-string ``iss``)."""
    c = issuer.claims(audiences=[AUD])
    c.update(claims)
    payload = json.dumps(c).encode()
    return jwt.api_jws.encode(payload, issuer._key, algorithm="RS256", headers={"kid": issuer.kid}).encode()


BAD_CONTENT: dict[str, tuple[Builder, type[TokenError], str]] = {
    "empty file": (lambda i, g: b"", TokenFileError, "is empty"),
    "whitespace only": (lambda i, g: b" \n\t \n", TokenFileError, "whitespace only"),
    "garbage": (lambda i, g: b"<html>502 Bad Gateway</html>\n", MalformedTokenError, "three dot-separated parts"),
    "non-UTF-8 bytes": (lambda i, g: b"\xff\xfe\x00\x81" + g.encode()[4:], MalformedTokenError, "non-ASCII"),
    "truncated JWT (half)": (lambda i, g: g[: len(g) // 2].encode(), MalformedTokenError, "not a JWT"),
    "truncated JWT (in payload)": (
        lambda i, g: ".".join([g.split(".")[0], g.split(".")[1][:-1], g.split(".")[2]]).encode(),
        MalformedTokenError,
        "not a valid JWT",
    ),
    "bad base64": (
        lambda i, g: g.replace(".", ".*&%", 1).encode(),
        MalformedTokenError,
        "not a valid JWT",
    ),
    "bad JSON": (
        lambda i, g: ".".join([g.split(".")[0], _b64(b'{"exp": 1,'), g.split(".")[2]]).encode(),
        MalformedTokenError,
        "not a valid JWT",
    ),
    "payload not an object": (
        lambda i, g: ".".join([g.split(".")[0], _b64(b"[1, 2]"), g.split(".")[2]]).encode(),
        MalformedTokenError,
        "not a valid JWT",
    ),
    "exp as a string": (lambda i, g: _signed(i, exp="tomorrow"), MalformedTokenError, "claim 'exp' must be a number"),
    "exp as a boolean": (lambda i, g: _signed(i, exp=True), MalformedTokenError, "claim 'exp' must be a number"),
    "aud as a number": (lambda i, g: _signed(i, aud=42), MalformedTokenError, "claim 'aud' must be a string"),
    "iss as a list": (lambda i, g: _signed(i, iss=["x"]), MalformedTokenError, "claim 'iss' must be a string"),
    "multi-megabyte file": (lambda i, g: g.encode() + b"A" * (4 << 20), TokenFileError, "larger than any JWT"),
}


@pytest.mark.parametrize("fault", list(BAD_CONTENT))
def test_bad_content_at_start_raises_typed_error(
    fault: str, kubelet: Kubelet, projected_volume: ProjectedVolume, token_issuer: TokenIssuer
) -> None:
    build, kind, cause = BAD_CONTENT[fault]
    good = kubelet.current
    assert good is not None
    publish(projected_volume, file_with(build(token_issuer, good)))
    path = str(projected_volume.token_path)
    with pytest.raises(kind) as ei:
        TokenSource(path, audience=AUD)
    _assert_names(ei.value, path, cause, good)
    assert path not in HUB.files  # nothing left registered or watched for the failed source
    assert path not in str(HUB.watched_directories())
    new = kubelet.rotate()  # the kubelet writes a good token: a source now works
    with TokenSource(path, audience=AUD) as s:
        assert s.token() == new


@pytest.mark.parametrize("fault", list(BAD_CONTENT))
def test_bad_content_mid_run_keeps_the_good_token(  # noqa: PLR0917 - fixtures
    fault: str,
    src: TokenSource,
    kubelet: Kubelet,
    projected_volume: ProjectedVolume,
    token_issuer: TokenIssuer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    build, kind, cause = BAD_CONTENT[fault]
    good = src.token()
    publish(projected_volume, file_with(build(token_issuer, good)))
    assert wait_for(lambda: _failures(caplog)), "inotify did not report the new generation"
    for _ in range(100):
        assert src.token() == good
    token_issuer.verify(src.token(), audience=AUD)  # still a valid token
    for _ in range(3):
        with pytest.raises(kind) as ei:
            src.reload()
        _assert_names(ei.value, src.path, cause, good)
    assert len(_failures(caplog)) == 1, "one warning per distinct failure, not one per call"
    assert cause in _failures(caplog)[0]
    new = kubelet.rotate()
    assert wait_for(lambda: src.token() == new)
    assert src.reload().value == new  # the failure is over


def test_warning_once_per_distinct_failure(
    src: TokenSource,
    kubelet: Kubelet,
    projected_volume: ProjectedVolume,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fault(content: bytes, expect: int) -> None:
        publish(projected_volume, file_with(content))
        wait_for(lambda: len(_failures(caplog)) >= expect, timeout=1.0)
        with pytest.raises(TokenError):
            src.reload()

    fault(b"", 1)
    fault(b"", 2)  # the same failure again, from a new generation: no new warning
    assert len(_failures(caplog)) == 1
    fault(b"garbage", 2)  # a different failure: one more
    assert len(_failures(caplog)) == 2
    new = kubelet.rotate()
    assert wait_for(lambda: src.token() == new)
    fault(b"", 3)  # after a good read, the first failure is news again
    assert len(_failures(caplog)) == 3


# --------------------------------------------------------------------------- the file itself ---
def test_missing_at_start(tmp_path: Path) -> None:
    path = str(tmp_path / "serviceaccount" / "token")
    with pytest.raises(TokenFileError) as ei:
        TokenSource(path)
    _assert_names(ei.value, path, "does not exist")
    assert ei.value.errno == 2
    assert path not in HUB.files


def test_deleted_mid_run(
    src: TokenSource, kubelet: Kubelet, projected_volume: ProjectedVolume, caplog: pytest.LogCaptureFixture
) -> None:
    good = src.token()
    os.remove(projected_volume.token_path)  # the user-visible link: IN_DELETE token
    assert wait_for(lambda: _failures(caplog))
    assert src.token() == good
    with pytest.raises(TokenFileError) as ei:
        src.reload()
    _assert_names(ei.value, src.path, "does not exist", good)
    new = kubelet.rotate()  # AtomicWriter recreates the missing link
    assert wait_for(lambda: src.token() == new)
    assert len(_failures(caplog)) == 1


def test_volume_directory_removed_and_recreated(
    src: TokenSource,
    kubelet: Kubelet,
    projected_volume: ProjectedVolume,
    token_issuer: TokenIssuer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = src.token()
    root = str(projected_volume.directory)
    projected_volume.remove()
    assert wait_for(lambda: HUB.watched_directories().get(root) is False), "the lost watch is noticed"
    assert src.token() == good
    with pytest.raises(TokenFileError) as ei:
        src.reload()
    _assert_names(ei.value, src.path, "does not exist", good)

    volume = ProjectedVolume(root)  # the pod's volume set up again
    again = Kubelet(volume, token_issuer, audiences=[AUD])
    first = again.rotate()
    assert wait_for(lambda: HUB.watched_directories().get(root) is True, timeout=3.0), "re-armed within ~1 s"
    assert wait_for(lambda: src.token() == first)
    # The watch works again: a rotation arrives through inotify (the refresh timer is 300 s).
    t0 = time.monotonic()
    second = again.rotate()
    assert wait_for(lambda: src.token() == second, timeout=4.0)
    assert time.monotonic() - t0 < 4.0
    assert len(_failures(caplog)) == 1


def test_data_link_pointing_at_missing_directory(
    src: TokenSource, kubelet: Kubelet, projected_volume: ProjectedVolume, caplog: pytest.LogCaptureFixture
) -> None:
    good = src.token()
    root = projected_volume.directory
    os.symlink("..2001_01_01_00_00_00.404", root / "..data_tmp")
    os.rename(root / "..data_tmp", root / "..data")  # a swap to a directory that does not exist
    assert wait_for(lambda: _failures(caplog))
    assert src.token() == good
    with pytest.raises(TokenFileError) as ei:
        src.reload()
    _assert_names(ei.value, src.path, "dangling symlink", good)
    new = kubelet.rotate()
    assert wait_for(lambda: src.token() == new)


def _make_dir(p: Path) -> None:
    p.mkdir()
    (p / "token").write_text("not here")


def _make_loop(p: Path) -> None:
    os.symlink(p.name, p)


def _make_loop2(p: Path) -> None:
    os.symlink("other", p)
    os.symlink(p.name, p.parent / "other")


@pytest.mark.parametrize(
    ("make", "cause"),
    [
        pytest.param(_make_dir, "is a directory", id="replaced by a directory"),
        pytest.param(_make_loop, "symlink loop", id="symlink to itself"),
        pytest.param(_make_loop2, "symlink loop", id="two-link symlink loop"),
        pytest.param(os.mkfifo, "not a regular file", id="FIFO (must not hang)"),
    ],
)
def test_not_a_regular_file(  # noqa: PLR0917 - parameters and fixtures
    make: Callable[[Path], None],
    cause: str,
    src: TokenSource,
    projected_volume: ProjectedVolume,
    token_issuer: TokenIssuer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = src.token()
    publish(projected_volume, make)
    assert wait_for(lambda: _failures(caplog)), "the watcher thread re-read it (and did not hang)"
    assert src.token() == good
    t0 = time.monotonic()
    with pytest.raises(TokenFileError) as ei:
        src.reload()
    assert time.monotonic() - t0 < 1.0
    _assert_names(ei.value, src.path, cause, good)
    path = str(projected_volume.token_path)
    with pytest.raises(TokenFileError):
        TokenSource(path)  # at start too
    # The next good generation (published directly: AtomicWriter would itself block reading
    # a FIFO to compare contents).
    new = token_issuer.issue(audiences=[AUD])
    publish(projected_volume, file_with(new.encode()))
    assert wait_for(lambda: src.token() == new)
    assert len(_failures(caplog)) == 1


@pytest.mark.parametrize("kind", ["device", "directory"])
def test_not_a_file_at_start(kind: str, tmp_path: Path) -> None:
    path = "/dev/zero" if kind == "device" else str(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(TokenFileError) as ei:
        TokenSource(path)
    assert time.monotonic() - t0 < 1.0
    _assert_names(ei.value, path, "not a regular file" if kind == "device" else "is a directory")


def test_expired_rotation_keeps_the_valid_token(
    src: TokenSource, kubelet: Kubelet, token_issuer: TokenIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    good = src.token()
    expired = kubelet.rotate(now=time.time() - 7200)  # the kubelet wrote a token long expired
    assert wait_for(lambda: _failures(caplog))
    assert src.token() == good
    with pytest.raises(TokenExpiredError) as ei:
        src.reload()
    _assert_names(ei.value, src.path, "expired at", good, expired)
    token_issuer.verify(src.token(), audience=AUD)
    new = kubelet.rotate()
    assert wait_for(lambda: src.token() == new)


def test_expired_rotation_warned_once_with_bounded_message(
    src: TokenSource, kubelet: Kubelet, caplog: pytest.LogCaptureFixture
) -> None:
    kubelet.rotate(now=time.time() - 7200)
    assert wait_for(lambda: _failures(caplog))
    sizes = []
    for _ in range(5):
        with pytest.raises(TokenExpiredError) as ei:
            src.reload()
        sizes.append(len(str(ei.value)))
    assert len(set(sizes)) == 1, f"the error grows on each re-read: {sizes}"
    assert len(_failures(caplog)) == 1


def test_wrong_audience_rotation_keeps_the_valid_token(
    src: TokenSource, kubelet: Kubelet, token_issuer: TokenIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    good = src.token()
    other = kubelet.rotate(audiences=["someone-else"])
    assert wait_for(lambda: _failures(caplog))
    assert src.token() == good
    for _ in range(3):
        with pytest.raises(AudienceMismatchError) as ei:
            src.reload()
        _assert_names(ei.value, src.path, "someone-else", good, other)
    assert len(_failures(caplog)) == 1
    token_issuer.verify(src.token(), audience=AUD)
    new = kubelet.rotate()
    assert wait_for(lambda: src.token() == new)


def test_truncated_signature_is_refused(
    src: TokenSource, projected_volume: ProjectedVolume, caplog: pytest.LogCaptureFixture
) -> None:
    good = src.token()
    accepted = []
    for cut in range(1, 9):
        publish(projected_volume, file_with(good[:-cut].encode()))
        try:
            src.reload()
        except MalformedTokenError:
            continue
        if src.token() != good:
            accepted.append(cut)
            publish(projected_volume, file_with(good.encode()))
            src.reload()
    assert accepted == [], f"truncations by {accepted} characters were served"


def test_claim_out_of_float_range_is_a_typed_error(
    src: TokenSource, projected_volume: ProjectedVolume, token_issuer: TokenIssuer
) -> None:
    c = token_issuer.claims(audiences=[AUD])
    header = json.dumps({"alg": "RS256", "kid": token_issuer.kid}).encode()
    payload = json.dumps(c).replace(f'"exp": {c["exp"]}', '"exp": 1' + "0" * 400).encode()
    bad = f"{_b64(header)}.{_b64(payload)}.{_b64(b'x' * 256)}"
    publish(projected_volume, file_with(bad.encode()))
    with pytest.raises(MalformedTokenError):
        src.reload()


# --------------------------------------------------------------------------- permissions ---
def test_permission_denied_at_start_and_mid_run(token_issuer: TokenIssuer) -> None:
    """Root ignores read bits, so the scenario runs as uid 65534 in a child process."""
    d = world_dir()
    try:
        owned = ProjectedVolume(d / "root-owned", fs_user=0)  # token 0600, owned by root
        owned.rotate(token_issuer.issue(audiences=[AUD]))
        mine = d / "mine"
        mine.mkdir()
        os.chown(mine, NOBODY, NOBODY)
        tokens = [token_issuer.issue(audiences=[AUD]) for _ in range(3)]
        result = run_child(
            """
            from sa_token import TokenSource, TokenFileError
            from sa_token.testing import ProjectedVolume
            drop()

            def describe(e):
                return {"type": type(e).__name__, "errno": e.errno, "path": e.path, "msg": str(e)}

            try:
                TokenSource(P["root_token"])
                start = None
            except TokenFileError as e:
                start = describe(e)
            vol = ProjectedVolume(P["mine"])
            vol.rotate(P["tokens"][0])
            src = TokenSource(str(vol.token_path))
            vol.default_mode = 0  # the next generation is unreadable, even by its owner
            vol.rotate(P["tokens"][1])
            noticed = wait_for(lambda: any("re-read failed" in m for _, m in LOGS))
            served = [src.token() for _ in range(50)]
            errors = []
            for _ in range(3):
                try:
                    src.reload()
                except TokenFileError as e:
                    errors.append(describe(e))
            vol.default_mode = 0o644
            vol.rotate(P["tokens"][2])
            picked = wait_for(lambda: src.token() == P["tokens"][2])
            done(start=start, noticed=noticed, served_ok=all(t == P["tokens"][0] for t in served),
                 errors=errors, picked=picked, path=src.path, uid=os.getuid())
            """,
            {"uid": NOBODY, "root_token": str(owned.token_path), "mine": str(mine), "tokens": tokens},
        )
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert result["uid"] == NOBODY
    start = result["start"]
    assert start is not None and start["errno"] == 13
    assert start["path"] == str(owned.token_path) and str(owned.token_path) in start["msg"]
    assert "permission denied (mode 0600, owner uid 0" in start["msg"]
    assert result["noticed"] and result["served_ok"] and result["picked"]
    assert len(result["errors"]) == 3
    for e in result["errors"]:
        assert e["errno"] == 13 and e["path"] == result["path"] and "permission denied (mode 0000" in e["msg"]
    failures = [m for level, m in result["logs"] if level == "WARNING" and "re-read failed" in m]
    assert len(failures) == 1
    text = json.dumps(result)
    for t in tokens:
        for part in segments_of(t):
            assert part not in text.replace(json.dumps(tokens)[1:-1], "")


# --------------------------------------------------------------------------- the watcher ---
def test_inotify_instances_exhausted_timer_takes_over(token_issuer: TokenIssuer) -> None:
    """fs.inotify.max_user_instances (128 here) exhausted for real, as another uid."""
    d = world_dir()
    os.chown(d, INOTIFY_UID, INOTIFY_UID)
    tokens = [token_issuer.issue(audiences=[AUD]) for _ in range(4)]
    try:
        result = run_child(
            """
            import ctypes, errno
            from sa_token import TokenSource
            from sa_token._hub import HUB
            from sa_token.testing import ProjectedVolume
            drop()
            libc = ctypes.CDLL(None, use_errno=True)
            held = []
            while len(held) < 100000:
                fd = libc.inotify_init1(os.O_CLOEXEC)
                if fd < 0:
                    err = errno.errorcode.get(ctypes.get_errno())
                    break
                held.append(fd)
            vols = [ProjectedVolume(os.path.join(P["dir"], "v%d" % i)) for i in range(3)]
            for v in vols:
                v.rotate(P["tokens"][0])
            srcs = [TokenSource(str(v.token_path), refresh_interval=0.2) for v in vols]
            modes = [repr(s) for s in srcs]
            for i, v in enumerate(vols):
                v.rotate(P["tokens"][i + 1])
            seen = wait_for(lambda: all(s.token() == P["tokens"][i + 1] for i, s in enumerate(srcs)))
            done(held=len(held), err=err, modes=modes, seen=seen, watching=[s.watching for s in srcs],
                 threads=sorted(t.name for t in threading.enumerate()))
            """,
            {"uid": INOTIFY_UID, "dir": str(d), "tokens": tokens},
        )
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert result["err"] == "EMFILE" and result["held"] > 0
    assert all("mode=timer" in m for m in result["modes"])
    assert result["watching"] == [False, False, False]
    assert result["seen"], "rotations still arrive through the fallback timer"
    assert "sa-token-inotify" not in result["threads"]
    warnings = [m for level, m in result["logs"] if level == "WARNING"]
    assert len(warnings) == 1, warnings  # exactly one, for all three sources
    assert "max_user_instances" in warnings[0] and "fallback timer" in warnings[0]


_FD_LIMIT = """
import resource
from sa_token import TokenSource, TokenFileError
from sa_token._hub import HUB
from sa_token.testing import ProjectedVolume
vol = ProjectedVolume(os.path.join(P["dir"], "vol"))
vol.rotate(P["tokens"][0])
hi = max(int(f) for f in os.listdir("/proc/self/fd"))
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hi + 3, hard))
filler = []
while True:  # fill every free descriptor below the limit...
    try:
        filler.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        break
os.close(filler.pop())  # ...but one: inotify_init1() takes it, then the read has none
try:
    TokenSource(str(vol.token_path))
    error = None
except TokenFileError as exc:
    error = str(exc)
for fd in filler:
    os.close(fd)
# Descriptors are back, and the limit with them: at hi + 3, rotate()'s rmtree of the old data
# directory (it opens directory descriptors) could take the last ones while the watcher reads the
# new token, and that failed read is retried only after 5 s.
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
src = TokenSource(str(vol.token_path))  # the same inotify instance serves
vol.rotate(P["tokens"][1])
seen = wait_for(lambda: src.token() == P["tokens"][1])
inotify_fds = 0
for fd in os.listdir("/proc/self/fd"):
    try:
        inotify_fds += os.readlink("/proc/self/fd/" + fd) == "anon_inode:inotify"
    except OSError:
        pass
st = src.status()  # why, if the rotation was not seen
done(error=error, watching=src.watching, seen=seen, inotify_fds=inotify_fds,
     status=[st.reads, st.failures, st.last_error, src.read_at, time.time()])
"""


def test_open_file_limit_reached_at_start(token_issuer: TokenIssuer) -> None:
    """RLIMIT_NOFILE (ulimit -n) exhausted when a source is made: a typed error that names the
    file and the cause; once descriptors are free again, one inotify instance serves."""
    d = world_dir()
    tokens = [token_issuer.issue(audiences=[AUD]) for _ in range(2)]
    try:
        result = run_child(_FD_LIMIT, {"dir": str(d), "tokens": tokens})
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert result["error"] is not None and "Too many open files" in result["error"]
    assert str(d) in result["error"] and not any(t in result["error"] for t in tokens)
    assert result["watching"] and result["seen"], (result["logs"], result["status"])
    assert result["inotify_fds"] == 1


_INSTANCE_LIMIT = """
from sa_token import TokenSource
from sa_token.testing import ProjectedVolume
vol = ProjectedVolume(os.path.join(P["dir"], "vol"))
vol.rotate(P["tokens"][0])
src = TokenSource(str(vol.token_path), refresh_interval=0.2)
others = [TokenSource(str(vol.token_path)) for _ in range(3)]  # more sources: still one warning
vol.rotate(P["tokens"][1])
seen = wait_for(lambda: src.token() == P["tokens"][1])
done(watching=src.watching, status=src.status().watching, seen=seen)
"""


@pytest.mark.skipif(not _can_limit_inotify(), reason="needs unshare -Ur and per-user-namespace inotify limits")
def test_inotify_instance_limit_reached_timer_takes_over(token_issuer: TokenIssuer) -> None:
    """The node's inotify instance limit (fs.inotify.max_user_instances, shared by every
    container of the user) is reached, for real: a user namespace whose limit is 0. The timer
    re-reads instead, with one warning that names the limit."""
    d = world_dir()
    try:
        result = run_child(
            _INSTANCE_LIMIT,
            {"dir": str(d), "tokens": [token_issuer.issue(audiences=[AUD]) for _ in range(2)]},
            prefix=_limited("max_inotify_instances", 0),
        )
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert result["watching"] is False and result["status"] == "timer"
    assert result["seen"]
    warnings = [m for level, m in result["logs"] if level == "WARNING"]  # type: ignore[attr-defined]
    assert len(warnings) == 1 and "max_user_instances" in warnings[0] and "fallback timer" in warnings[0]


_WATCH_LIMIT = """
from sa_token import TokenSource
from sa_token._hub import HUB
from sa_token.testing import ProjectedVolume
vols = []
for i in range(4):  # the limit is 2 watches: the last two volumes cannot be watched
    v = ProjectedVolume(os.path.join(P["dir"], "vol%d" % i))
    v.rotate(P["tokens"][0])
    vols.append(v)
srcs = [TokenSource(str(v.token_path), refresh_interval=0.3) for v in vols]
time.sleep(2.5)  # arming is retried (1 s, then 2 s...): the warning must not repeat
vols[3].rotate(P["tokens"][1])
seen = wait_for(lambda: srcs[3].token() == P["tokens"][1])
done(watching=[s.watching for s in srcs], seen=seen)
"""


@pytest.mark.skipif(not _can_limit_inotify(), reason="needs unshare -Ur and per-user-namespace inotify limits")
def test_inotify_watch_limit_reached_warns_once(token_issuer: TokenIssuer) -> None:
    """fs.inotify.max_user_watches exhausted, for real (a user namespace with a limit of 2):
    the sources beyond it fall back to the timer, with ONE warning however often arming is
    retried (issue 9, finding 10: it used to repeat every second)."""
    d = world_dir()
    try:
        result = run_child(
            _WATCH_LIMIT,
            {"dir": str(d), "tokens": [token_issuer.issue(audiences=[AUD]) for _ in range(2)]},
            prefix=_limited("max_inotify_watches", 2),
        )
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert result["watching"] == [True, True, False, False]
    assert result["seen"]
    warnings = [m for level, m in result["logs"] if level == "WARNING"]  # type: ignore[attr-defined]
    assert len(warnings) == 1 and "max_user_watches" in warnings[0], warnings


_THREAD_FAULT = """
import signal
from sa_token import TokenSource
from sa_token._hub import HUB, HubFile
from sa_token.testing import ProjectedVolume
vol = ProjectedVolume(os.path.join(P["dir"], "vol"))
vol.rotate(P["tokens"][0])
src = TokenSource(str(vol.token_path))
watcher = HUB.watcher.thread

class Bomb(HubFile):
    # A watched file whose refresh raises what no `except Exception` catches (a bug, or an
    # asynchronous exception): the watcher thread must survive it.
    def refresh(self):
        raise SystemExit("injected watcher failure")

bomb_dir = os.path.join(P["dir"], "bomb")
os.mkdir(bomb_dir)
HUB.acquire("bomb", lambda: Bomb("bomb", os.path.join(bomb_dir, "x")), watch=True)
seen = []
for i in range(1, len(P["tokens"])):
    open(os.path.join(bomb_dir, "x"), "w").close()  # the event that makes the bomb go off
    vol.rotate(P["tokens"][i])  # a rotation right behind it
    seen.append(wait_for(lambda: src._snap.value == P["tokens"][i], timeout=3.0))
done(seen=seen, same_thread=HUB.watcher.thread is watcher and watcher.is_alive())
"""


def test_watcher_thread_survives_what_escapes_a_refresh(token_issuer: TokenIssuer) -> None:
    """SystemExit raised inside the watcher thread, three times: it is logged once, the thread
    goes on, and each rotation right behind it is still picked up (by the thread: no token()
    call helps)."""
    d = world_dir()
    try:
        result = run_child(
            _THREAD_FAULT, {"dir": str(d), "tokens": [token_issuer.issue(audiences=[AUD]) for _ in range(4)]}
        )
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert result["seen"] == [True, True, True]
    assert result["same_thread"]
    warnings = [m for level, m in result["logs"] if level == "WARNING"]  # type: ignore[attr-defined]
    assert sum("watcher thread caught SystemExit" in m for m in warnings) == 1, warnings


def test_dead_watcher_thread_never_serves_expired_and_is_restarted(
    kubelet: Kubelet, projected_volume: ProjectedVolume, token_issuer: TokenIssuer
) -> None:
    """The watcher thread is gone (it returns as soon as it is no longer the hub's thread):
    nobody picks rotations up in the background, yet no expired token is served; the first
    token() that must read the file restarts the thread, and rotations are picked up again."""
    tok = kubelet.rotate(expiration_seconds=600, now=time.time() - 550)  # expires in 50 s
    src = TokenSource(projected_volume.token_path, audience=AUD)
    try:
        with freeze_time(datetime.now(tz=timezone.utc)) as frozen:
            real_thread = HUB.watcher.thread
            assert real_thread is not None
            HUB.watcher.thread = threading.Thread(target=lambda: None)  # never started: "dead"
            HUB._poke()
            real_thread.join(5)
            assert not real_thread.is_alive()
            new = kubelet.rotate(expiration_seconds=600)
            time.sleep(0.2)  # real time: an event would have been picked up by now
            assert src.token() == tok  # the thread is gone: the rotation is not picked up
            frozen.tick(60)  # past exp of the first token, not of the new one
            assert src.token() == new  # token() re-read the file itself...
            assert HUB.watcher.thread is not None and HUB.watcher.thread.is_alive()  # ...and restarted the thread
        third = kubelet.rotate(expiration_seconds=600)
        assert wait_for(lambda: src._snap.value == third)  # picked up in the background again
    finally:
        src.close()


# --------------------------------------------------------------------------- the clock ---
class _Skewed:
    """The real clock plus an offset that a test moves (a jump of the system clock)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_clock_jumps_forward_past_exp(kubelet: Kubelet, projected_volume: ProjectedVolume) -> None:
    clock = _Skewed()
    with TokenSource(projected_volume.token_path, audience=AUD, clock=clock, watch=False) as s:
        old = s.token()
        exp = s.current().claims["exp"]
        clock.offset = 3000.0  # past the rotation point, before exp: a re-read, same token
        assert s.token() == old
        clock.offset = exp - time.time() + 1  # past exp; the kubelet has not rotated
        for _ in range(3):
            with pytest.raises(TokenExpiredError) as ei:
                s.token()
            _assert_names(ei.value, s.path, "expired at", old)
        assert s.token_nowait() is None
        with pytest.raises(TokenExpiredError):
            s.current()
        new = kubelet.rotate(now=clock())  # the kubelet catches up on the new time
        clock.offset += FAILED_READ_RETRY  # the re-read at expiry found nothing new: retry later
        assert s.token() == new  # re-read on demand, no event needed


def test_clock_sweep_never_serves_past_exp(kubelet: Kubelet, projected_volume: ProjectedVolume) -> None:
    clock = _Skewed()
    served = 0
    with TokenSource(projected_volume.token_path, audience=AUD, clock=clock, watch=False) as s:
        exp = s.current().claims["exp"]
        for step in range(0, 4000, 37):
            clock.offset = float(step)
            if step == 2000:
                kubelet.rotate(now=clock() - 1500, expiration_seconds=1800)  # exp earlier than the first
                exp = min(exp, s.reload().claims["exp"])
            try:
                tok = s.token()
            except TokenExpiredError:
                assert clock() >= exp
                continue
            served += 1
            claims = json.loads(base64.urlsafe_b64decode(tok.split(".")[1] + "=="))
            assert claims["exp"] > clock(), "a token was served past its exp"
    assert served > 10


def test_clock_jumps_backwards(kubelet: Kubelet, projected_volume: ProjectedVolume) -> None:
    clock = _Skewed()
    with TokenSource(projected_volume.token_path, audience=AUD, clock=clock, watch=False, refresh_interval=0.2) as s:
        clock.offset = -30.0  # back by less than the leeway
        new = kubelet.rotate()
        # Re-reads still happen (the background timer runs on the monotonic clock), although
        # the source's own deadline moved 30 s further away.
        assert wait_for(lambda: s.token() == new, timeout=3.0)
        clock.offset = -7200.0  # back by two hours: by this clock every token is from the future
        newer = kubelet.rotate()

        def refused() -> bool:
            try:
                s.token()
            except TokenNotYetValidError:
                return True
            return False

        assert wait_for(refused, timeout=3.0)
        with pytest.raises(TokenNotYetValidError) as ei:
            s.token()
        _assert_names(ei.value, s.path, "check this node's clock", new, newer)
        assert s.token_nowait() is None
        clock.offset = 0.0  # the clock is fixed: the newest token is served, no rotation needed
        assert wait_for(lambda: s.token() == newer, timeout=3.0)


def test_system_clock_jump_past_exp_is_seen_by_the_next_call(
    kubelet: Kubelet, projected_volume: ProjectedVolume
) -> None:
    """The system clock itself jumps (freezegun moves `time.time`) past the token's exp: the
    very next call refuses the token. No thread has to notice first (issue 9, finding 3: under
    freezegun, token() used to serve it until the *real* clock reached the deadline)."""
    tok = kubelet.rotate(expiration_seconds=3600)
    with TokenSource(projected_volume.token_path, audience=AUD) as src, freeze_time(
        datetime.now(tz=timezone.utc)
    ) as frozen:
        assert src.token() == tok
        frozen.move_to(datetime.now(tz=timezone.utc) + timedelta(hours=2))
        with pytest.raises(TokenExpiredError):
            src.token()
        assert src.token_nowait() is None
        with pytest.raises(TokenExpiredError):
            src.current()
        assert src.status().valid is False and src.status().reason == "expired"


# --------------------------------------------------------------------------- fork ---
def test_fork_rotations_in_parent_and_child(
    src: TokenSource, kubelet: Kubelet, projected_volume: ProjectedVolume, token_issuer: TokenIssuer
) -> None:
    in_parent = token_issuer.issue(audiences=[AUD])
    in_child = token_issuer.issue(audiences=[AUD])
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    kubelet.start(every=0.01)  # a thread writing the volume while we fork
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            signal.alarm(20)
            os.close(report_r)
            os.close(go_w)
            os.read(go_r, 1)  # the parent rotated after the fork
            saw_parent = wait_for(lambda: src.token() == in_parent)
            projected_volume.rotate(in_child)
            saw_own = wait_for(lambda: src.token() == in_child)
            report = {
                "saw_parent": saw_parent,
                "saw_own": saw_own,
                "watched": HUB.watched_directories().get(str(projected_volume.directory)),
                "threads": thread_names(),
            }
            os.write(report_w, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(report_w)
    os.close(go_r)
    kubelet.stop()
    projected_volume.rotate(in_parent)
    assert wait_for(lambda: src.token() == in_parent)
    os.write(go_w, b"!")
    raw = b""
    while chunk := os.read(report_r, 65536):
        raw += chunk
    os.close(report_r)
    os.close(go_w)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    report = json.loads(raw)
    assert report["saw_parent"], "the child saw a rotation made after the fork"
    assert report["saw_own"], "the child saw its own rotation"
    assert report["watched"] is True
    assert [t for t in report["threads"] if t.startswith("sa-token")] == ["sa-token-watcher"]
    assert wait_for(lambda: src.token() == in_child), "the parent saw the child's rotation"


# --------------------------------------------------------------------------- open/close ---
def test_collected_source_finalizer_does_not_deadlock(token_issuer: TokenIssuer) -> None:
    d = world_dir()
    try:
        (d / "token").write_text(token_issuer.issue())
        result = run_child(
            """
            import faulthandler, gc
            import sa_token._source as S
            from sa_token import TokenSource
            faulthandler.dump_traceback_later(2, exit=True)  # a deadlock ends the child
            gc.disable()
            from sa_token._hub import HUB
            s = TokenSource(P["path"])
            s.cycle = s  # a closed source that only the cyclic garbage collector frees
            s.close()
            del s
            with HUB.lock:  # what the registry holds while it allocates
                gc.collect()  # the collector may run at any allocation: here, explicitly
            s = TokenSource(P["path"])  # now one dropped WITHOUT close(), freed under the lock
            s.cycle = s
            del s
            with HUB.lock:
                gc.collect()
            # its file is released later, by the watcher thread, outside every lock
            released = wait_for(lambda: not HUB.watched_directories() and not HUB.files, timeout=5)
            done(ok=True, released=released)
            """,
            {"path": str(d / "token")},
        )
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert result["ok"]
    assert result["released"]



def test_open_close_cycles_leak_nothing(token_issuer: TokenIssuer, tmp_path: Path) -> None:
    vols = []
    for i in range(4):
        v = ProjectedVolume(tmp_path / f"v{i}")
        v.rotate(token_issuer.issue(audiences=[AUD]))
        vols.append(v)
    plain = tmp_path / "plain" / "token"
    plain.parent.mkdir()
    plain.write_text(token_issuer.issue(audiences=[AUD]))
    paths = [str(v.token_path) for v in vols] + [str(plain)]
    dirs = {str(v.directory) for v in vols} | {str(plain.parent)}
    with TokenSource(paths[0]):  # warm up: the hub's threads exist from here on
        pass
    gc.collect()
    fds, threads = fd_count(), threading.active_count()
    watches = inotify_watches()
    for cycle in range(200):
        srcs = [TokenSource(p, audience=AUD) for p in paths]
        srcs.append(TokenSource(paths[0], watch=False))  # a second source on a shared file
        if cycle % 50 == 0:
            assert all(HUB.watched_directories().get(d) for d in dirs)
        for s in srcs:
            s.close()
    gc.collect()
    assert not dirs & set(HUB.watched_directories())
    assert not set(paths) & set(HUB.files)
    assert fd_count() == fds
    assert threading.active_count() == threads
    assert inotify_watches() == watches  # the kernel's own count of our watches
    assert not set(paths) & {f.path for f in HUB.files.values()}


def test_closed_source_raises_and_stops_reading(
    kubelet: Kubelet, projected_volume: ProjectedVolume, count_opens: Callable[[object], object]
) -> None:
    s = TokenSource(projected_volume.token_path, audience=AUD)
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.token()
    opens = count_opens(projected_volume.token_path)
    kubelet.rotate()
    time.sleep(0.3)  # an event a live source would have acted on within milliseconds
    assert opens.count == 0  # type: ignore[attr-defined]


def test_closed_source_current_still_readable(kubelet: Kubelet, projected_volume: ProjectedVolume) -> None:
    s = TokenSource(projected_volume.token_path, audience=AUD)
    last = s.token()
    s.close()
    assert s.current().value == last

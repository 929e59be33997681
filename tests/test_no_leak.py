"""Security (issue 6): the token never leaks, and the volume is only ever read.

* Never in log records at any level (a DEBUG handler on the root and ``sa_token`` loggers while
  every failure path runs), in ``repr``/``str`` of any object, in exception messages or in
  formatted tracebacks (whole chains, suppressed contexts included), nor in CLI output without
  an explicit flag. Scanned for the whole token, the payload segment and the signature alone.
* ``hosts=`` holds across redirects and 401 retries (requests and httpx).
* Sources never write to the volume: no write-mode open, chmod, chown, rename, unlink... on it
  (audit hooks), and every entry's bytes, mode, owner, mtime and ctime are exactly what the
  simulated kubelet left there.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import stat
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import httpx
import pytest
import requests

import sa_token.httpx as sa_httpx
import sa_token.requests as sa_requests
from _reliability import Secrets, file_with, publish
from conftest import WRITE_HITS as _AUDIT_HITS
from conftest import WRITE_ROOTS as _AUDIT_ROOTS
from conftest import wait_for
from conftest import writer as _writer
from sa_token import TokenError, TokenSource
from sa_token._hub import HUB
from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer
from sa_token.testing.apiserver import FakeAPIServer

AUD = "no-leak"


@pytest.fixture
def secrets() -> Secrets:
    return Secrets()


@pytest.fixture
def vol(tmp_path: Path) -> ProjectedVolume:
    return ProjectedVolume(tmp_path / "tokens")


@pytest.fixture
def kl(vol: ProjectedVolume, token_issuer: TokenIssuer, secrets: Secrets) -> Kubelet:
    k = Kubelet(vol, token_issuer, audiences=[AUD], on_rotate=secrets.add)
    k.rotate()
    return k


class _Everything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)  # includes exc_info tracebacks and stack_info
        self.lines.append(text + repr(record.args) + repr(record.msg))


@contextlib.contextmanager
def _all_logs() -> Iterator[_Everything]:
    handler = _Everything()
    loggers = [logging.getLogger(), logging.getLogger("sa_token")]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for lg, level in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.setLevel(level)


def _chain_texts(exc: BaseException, *, suppressed: bool = False) -> list[str]:
    """str/repr/args of the exception and of every cause and context it shows (with
    ``suppressed``, also contexts hidden by ``raise ... from None``, which still hold their
    objects), plus the formatted traceback of the whole chain."""
    texts = ["".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        texts += [str(e), repr(e), repr(e.args), repr(getattr(e, "__dict__", {}))]
        texts.append("".join(traceback.format_exception_only(type(e), e)))
        stack += [c for c in (e.__cause__, e.__context__) if c is not None]
        if not suppressed and e.__suppress_context__ and e.__cause__ is None:
            stack = [c for c in stack if c is not e.__context__]
    return texts


def _failure_paths(
    kl: Kubelet, vol: ProjectedVolume, issuer: TokenIssuer, secrets: Secrets, tmp_path: Path
) -> list[BaseException]:
    """Run every failure path we know of; returns the exceptions raised to the caller."""
    errors: list[BaseException] = []

    def catch(fn: Callable[[], object]) -> None:
        try:
            fn()
        except (TokenError, RuntimeError) as exc:
            errors.append(exc)
            try:  # what an application's error handling does with it
                raise RuntimeError("request failed") from exc
            except RuntimeError as wrapped:
                errors.append(wrapped)

    src = TokenSource(vol.token_path, audience=AUD)
    src.subscribe(lambda tok: (_ for _ in ()).throw(ValueError("subscriber bug")))
    good = src.token()
    bad_contents = [
        b"",
        b"garbage",
        b"\xff\xfe" + good.encode(),
        good[:-2].encode() + b"**",
        good.replace(".", ".@", 1).encode(),
        good[: len(good) // 2].encode(),
        good.encode() + b"A" * 100_000,
    ]
    for content in bad_contents:
        publish(vol, file_with(content))
        catch(src.reload)
        catch(lambda c=content: TokenSource(vol.token_path))  # type: ignore[misc]
    for kwargs in ({"now": time.time() - 7200}, {"audiences": ["other"]}, {"now": time.time() + 7200}):
        kl.rotate(**kwargs)
        catch(src.reload)
        catch(lambda: TokenSource(vol.token_path, audience=AUD, issuer="https://elsewhere"))
    publish(vol, os.mkfifo)
    catch(src.reload)
    publish(vol, lambda p: os.symlink(p.name, p))
    catch(src.reload)
    os.remove(vol.token_path)
    catch(src.reload)
    kl.rotate()  # subscriber raises in a library thread: logged with its traceback
    wait_for(lambda: src.token() == kl.current)
    # Stale (not rotated) and expired, on an injected clock.
    clock_src = TokenSource(vol.token_path, audience=AUD, clock=lambda: time.time() + 3300, watch=False)
    clock_src.token()
    late = TokenSource(vol.token_path, audience=AUD, clock=lambda: time.time() + 99999, watch=False)
    catch(late.token)
    catch(late.current)
    late.close()
    catch(late.token)
    catch(lambda: TokenSource(tmp_path / "missing"))
    clock_src.close()
    src.close()
    return errors


def test_token_never_in_logs_errors_or_tracebacks(
    kl: Kubelet, vol: ProjectedVolume, token_issuer: TokenIssuer, secrets: Secrets, tmp_path: Path
) -> None:
    with _all_logs() as logs:
        errors = _failure_paths(kl, vol, token_issuer, secrets, tmp_path)
        time.sleep(0.1)
    assert len(errors) > 30
    assert len(logs.lines) > 10
    assert any("Traceback" in line for line in logs.lines), "the subscriber's traceback was logged"
    assert len(secrets.tokens) >= 4
    for line in logs.lines:
        secrets.assert_clean(line, f"log line {line[:80]!r}")
    for exc in errors:
        for text in _chain_texts(exc):
            secrets.assert_clean(text, f"{type(exc).__name__}")


def test_token_never_in_repr_or_str(
    kl: Kubelet, vol: ProjectedVolume, token_issuer: TokenIssuer, secrets: Secrets
) -> None:
    src = TokenSource(vol.token_path, audience=AUD)
    tok = src.current()
    server = FakeAPIServer(token_issuer, audiences=[AUD], tls=False)
    try:
        requests.get(f"{server.url}/echo", headers={"Authorization": f"Bearer {src.token()}"}, timeout=5)
        objects: list[Any] = [
            src,
            tok,
            tok.claims,
            tok.header,
            sa_requests.TokenAuth(src),
            sa_httpx.TokenAuth(src, hosts=["a.example:443"]),
            kl,
            vol,
            token_issuer,
            server,
            server.requests,
            HUB.files.get(src.path),
            HUB.watched_directories(),
        ]
        for obj in objects:
            for text in (repr(obj), str(obj), f"{obj}", f"{obj!r}"):
                found = [f for f in secrets.find(text) if obj is not tok.claims and obj is not tok.header]
                assert not found, f"repr/str of {type(obj).__name__} contains the {found}"
        secrets.assert_clean(repr(src.current()), "Token")
    finally:
        server.close()
        src.close()


def test_token_not_held_by_suppressed_exception_context(
    kl: Kubelet, vol: ProjectedVolume, secrets: Secrets
) -> None:
    publish(vol, file_with(b"\xff" + (kl.current or "").encode()))
    with pytest.raises(TokenError) as ei:
        TokenSource(vol.token_path, audience=AUD)
    for text in _chain_texts(ei.value, suppressed=True):
        secrets.assert_clean(text, "the exception chain")


def test_parse_errors_hold_no_token_in_suppressed_contexts(
    kl: Kubelet, vol: ProjectedVolume, secrets: Secrets
) -> None:
    """The pyjwt errors behind MalformedTokenError (kept as suppressed __context__) carry no
    token part either."""
    src = TokenSource(vol.token_path, audience=AUD)
    try:
        good = src.token()
        h, p, sig = good.split(".")
        for bad in (good[:-1], f"{h}.{p[:-1]}.{sig}", f"{h}.{p}x.{sig}", f"{h[:-2]}.{p}.{sig}", f"{h}.{p[:9]}.{sig}"):
            publish(vol, file_with(bad.encode()))
            with pytest.raises(TokenError) as ei:  # the original exception, not reload()'s copy
                TokenSource(vol.token_path)
            for text in _chain_texts(ei.value, suppressed=True):
                secrets.assert_clean(text, "the exception chain")
    finally:
        src.close()


# --------------------------------------------------------------------------- CLI ---
def _cli(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sa_token", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_cli_never_prints_the_token(kl: Kubelet, vol: ProjectedVolume, secrets: Secrets, tmp_path: Path) -> None:
    path = str(vol.token_path)
    outputs = []
    for args in (["inspect", path], ["inspect", path, "--json"], ["inspect", path, "--audience", "x"]):
        outputs.append(_cli(*args))
    assert outputs[0].returncode == 0 and outputs[2].returncode == 1
    # watch, through rotations, then through a failure
    for json_flag in ([], ["--json"]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "sa_token", "watch", path, "--max-rotations", "2", "--timeout", "15", *json_flag],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the start line: the child is watching
        publish(vol, file_with(b"garbage"))
        time.sleep(0.2)
        kl.rotate()
        time.sleep(0.2)
        kl.rotate()
        out, err = proc.communicate(timeout=20)
        outputs.append(subprocess.CompletedProcess(proc.args, proc.returncode, first + out, err))
    bad = tmp_path / "bad"
    bad.write_text(kl.current[:-3] + "***")  # type: ignore[index]
    outputs.append(_cli("inspect", str(bad)))
    expired = tmp_path / "expired"
    expired.write_text(secrets.add(kl.mint(now=time.time() - 7200)) or "")
    outputs.append(_cli("inspect", str(expired)))
    outputs.append(_cli("inspect", str(expired), "--json"))
    for p in outputs:
        secrets.assert_clean(p.stdout, f"stdout of {p.args[3:]}")
        secrets.assert_clean(p.stderr, f"stderr of {p.args[3:]}")
    assert any("rotat" in p.stdout.lower() for p in outputs[3:5]), [p.stdout for p in outputs[3:5]]


# --------------------------------------------------------------------------- hosts ---
@pytest.fixture
def two_servers(token_issuer: TokenIssuer) -> Iterator[tuple[FakeAPIServer, FakeAPIServer]]:
    allowed = FakeAPIServer(token_issuer, audiences=[AUD], tls=False)
    other = FakeAPIServer(token_issuer, audiences=[AUD], tls=False)
    try:
        yield allowed, other
    finally:
        allowed.close()
        other.close()


def _never_got_a_token(server: FakeAPIServer) -> None:
    assert server.requests, "the other server was reached"
    for rec in server.requests:
        assert rec.token_jti is None and rec.scheme is None, rec


@pytest.mark.parametrize("client", ["requests", "httpx"])
def test_hosts_hold_across_redirects_and_retries(
    client: str, kl: Kubelet, vol: ProjectedVolume, two_servers: tuple[FakeAPIServer, FakeAPIServer]
) -> None:
    allowed, other = two_servers
    # No watch: a rotation is only noticed through the 401 path (invalidate + re-read).
    src = TokenSource(vol.token_path, audience=AUD, watch=False)
    hosts = [f"127.0.0.1:{allowed.port}"]

    def get(url: str) -> int:
        if client == "requests":
            with requests.Session() as s:
                s.auth = sa_requests.TokenAuth(src, hosts=hosts)
                return s.get(url, timeout=5).status_code
        with httpx.Client(auth=sa_httpx.TokenAuth(src, hosts=hosts), follow_redirects=True, timeout=5) as c:
            return c.get(url).status_code

    try:
        assert get(f"{allowed.url}/echo") == 200
        assert get(f"{allowed.url}/redirect?to={allowed.url}/echo") == 200  # same origin: kept
        # Redirected to another origin: the token is dropped, the 401 there is not retried with it.
        assert get(f"{allowed.url}/redirect?to={other.url}/echo") == 401
        assert get(f"{other.url}/echo") == 401
        # A 401 from the allowed server after a rotation: retried there, with the new token.
        kl.rotate()
        allowed.fail_next(1)
        other.fail_next(1)
        assert get(f"{allowed.url}/echo") == 200
        assert get(f"{other.url}/redirect?to={other.url}/echo") == 401
        _never_got_a_token(other)
        assert any(r.token_jti for r in allowed.requests)
    finally:
        src.close()


# --------------------------------------------------------------------------- read-only ---
def _snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, ""]:
            p = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                content: Any = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                content = ("file", Path(p).read_bytes())
            else:
                content = ("dir", sorted(os.listdir(p))) if stat.S_ISDIR(st.st_mode) else ("other",)
            out[os.path.relpath(p, root)] = (
                content, st.st_mode, st.st_uid, st.st_gid, st.st_ino, st.st_mtime_ns, st.st_ctime_ns,
            )
    return out


def test_sources_never_modify_the_volume(token_issuer: TokenIssuer, tmp_path: Path) -> None:
    vol = ProjectedVolume(tmp_path / "ro", fs_group=os.getgid())  # 0640 token, setgid dirs
    kubelet = Kubelet(vol, token_issuer, audiences=[AUD], ca_pem=b"-----BEGIN CERTIFICATE-----\n")
    _AUDIT_ROOTS.append(str(vol.directory))
    _AUDIT_HITS.clear()
    sources: list[TokenSource] = []
    try:
        with _writer():
            kubelet.rotate()
        sources = [
            TokenSource(vol.token_path, audience=AUD),
            TokenSource(vol.token_path, audience=AUD, watch=False, refresh_interval=0.05),
            TokenSource(vol.path("..data") / "token", audience=AUD),
        ]

        def settle(expect: Optional[str]) -> None:
            if expect is not None:
                assert wait_for(lambda: all(s.token() == expect for s in sources))
            for s in sources:
                with contextlib.suppress(TokenError):
                    s.reload()
                s.token()
                s.invalidate()
                s.token()
            time.sleep(0.15)  # several timer re-reads of the 0.05 s source

        steps: list[Callable[[], Optional[str]]] = [
            kubelet.rotate,
            lambda: (publish(vol, file_with(b"garbage")), None)[1],
            kubelet.rotate,
            lambda: kubelet.rotate(audiences=["other"]) and None,
            kubelet.rotate,
            lambda: (os.remove(vol.token_path), None)[1],
            kubelet.rotate,
        ]
        for step in steps:
            with _writer():
                expect = step()
            written = _snapshot(vol.directory)
            settle(expect)
            after = _snapshot(vol.directory)
            changed = sorted(k for k in set(written) | set(after) if written.get(k) != after.get(k))
            assert not changed, f"entries changed by the library: {changed}"
        assert _AUDIT_HITS == [], _AUDIT_HITS
    finally:
        _AUDIT_ROOTS.clear()
        for s in sources:
            s.close()
    # The audit hook itself works: a write by the test (outside _writer) is caught.
    _AUDIT_ROOTS.append(str(vol.directory))
    try:
        with open(vol.directory / "probe", "w") as f:
            f.write("x")
        assert any("probe" in h for h in _AUDIT_HITS)
    finally:
        _AUDIT_ROOTS.clear()
        _AUDIT_HITS.clear()
    assert io is not None

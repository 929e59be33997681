"""Round 3 of hostile testing (issue 19): user code never runs under the library's locks, no
transient failure sticks, outside text reaches people through one formatter, and the smaller
promises. Each test fails without its fix; the re-entry and fork cases run in subprocesses with
a timeout (a deadlock there is a failure, not a hung suite)."""

from __future__ import annotations

import copy
import gc
import json
import os
import pickle
import subprocess
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import PYTHON, FakeClock, sa_token_warnings, wait_for
from sa_token import (
    CABundle,
    ConfigurationError,
    TokenError,
    TokenExpiredError,
    TokenFileError,
    TokenSource,
    _fmt,
)
from sa_token._hub import HUB
from sa_token._lease import LeaseKeeper
from sa_token._token import Token, parse_token
from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer

AUD = "round3"
ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, timeout: float = 60, prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter; its last stdout line is JSON. A timeout fails."""
    proc = subprocess.run(
        [*prefix, PYTHON, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture
def vol(tmp_path: Path, token_issuer: TokenIssuer) -> tuple[ProjectedVolume, Kubelet]:
    volume = ProjectedVolume(tmp_path / "sa")
    kubelet = Kubelet(volume, token_issuer, audiences=[AUD], expiration_seconds=3600)
    kubelet.rotate()
    return volume, kubelet


# ----------------------------------------------------------------------- 1. re-entry -------
_REENTRY = """
import faulthandler, gc, json, logging, os, sys, threading
faulthandler.dump_traceback_later(60, exit=True)  # a deadlock fails with every thread's stack
from sa_token import TokenError, TokenSource
entry, mode, d, good1, good2, bad = sys.argv[1:7]
path = os.path.join(d, "token")

def write(value):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(value)
    os.replace(tmp, path)

write(good1)
shared = TokenSource(path)
victims = [TokenSource(path) for _ in range(60)]
unsubscribes = [shared.subscribe(lambda tok: None) for _ in range(60)]
refusals = []
busy = threading.local()

def act():
    if getattr(busy, "on", False):
        return
    busy.on = True
    try:
        if entry == "close" and victims:
            victims.pop().close()
        elif entry == "reload":
            shared.reload()
        elif entry == "token":
            shared.invalidate()
            shared.token()
        elif entry == "init":
            TokenSource(path).close()
        elif entry == "unsubscribe" and unsubscribes:
            unsubscribes.pop()()
    except RuntimeError as exc:  # the documented refusal: no source made inside our registry
        refusals.append(str(exc))
    except TokenError:
        pass  # the file is garbage at the moment: what reload() says then
    finally:
        busy.on = False

class Cycle:  # collected by the garbage collector, wherever it strikes
    def __init__(self):
        self.me = self
    def __del__(self):
        act()

class Handler(logging.Handler):
    def emit(self, record):
        act()

if mode == "finalizer":
    gc.set_threshold(97, 1, 1)  # frequent collections: some strike inside our locked sections
else:
    logger = logging.getLogger("sa_token")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Handler(logging.DEBUG))
for i in range(80 if mode == "finalizer" else 24):
    if mode == "finalizer":
        Cycle()
    write((good1, bad, good2, bad)[i % 4])
    try:
        shared.reload()
    except TokenError:
        pass
    if mode == "finalizer":
        Cycle()
    try:
        TokenSource(path).close()
    except TokenError:
        pass  # made while the file is garbage
gc.set_threshold(700, 10, 10)
write(good1)
shared.reload()
print(json.dumps({"token": shared.token() == good1, "refusals": refusals[:2]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["finalizer", "logging-handler"])
@pytest.mark.parametrize("entry", ["close", "reload", "token", "init", "unsubscribe"])
def test_entry_points_reentered_from_user_code_never_deadlock(
    tmp_path: Path, token_issuer: TokenIssuer, entry: str, mode: str
) -> None:
    """close(), reload(), slow-path token(), TokenSource() and an unsubscribe, called from a
    __del__ the GC runs inside our locked sections, or from a logging handler of our warnings:
    no deadlock (the child ends within its timeout), and the source still serves."""
    good1, good2 = (token_issuer.issue(audiences=[AUD]) for _ in range(2))
    result = _run(_REENTRY, entry, mode, str(tmp_path), good1, good2, "not a jwt", timeout=90)
    assert result["token"]
    for refusal in result["refusals"]:  # only TokenSource() inside our own registry is refused
        assert entry == "init" and "cannot be created" in refusal


_SHUTDOWN = """
import faulthandler, gc, sys, threading
faulthandler.dump_traceback_later(30, exit=True)  # a hang at exit fails with every thread's stack
gc.disable()  # the cycle is collected by the interpreter's own last collections, after threads froze:
# an automatic one could strike earlier (at atexit, in weakref's `import gc`: seen on 3.9), while
# the daemon thread below still runs and, holding the lock for good, is no frozen thread at all
from sa_token import TokenError, TokenSource
src = TokenSource(sys.argv[1], watch=False)
victim = TokenSource(sys.argv[1], watch=False)
src.token()
taken = threading.Event()

def frozen():  # a daemon thread that holds the file's lock when the interpreter stops it
    src._file.lock.acquire()
    taken.set()
    threading.Event().wait()

threading.Thread(target=frozen, daemon=True).start()
taken.wait()

class Cycle:  # collected by the interpreter's last collections, after daemon threads froze
    def __init__(self):
        self.me = self
    def __del__(self):
        sys.stderr.write("finalizer ran\\n")
        for call in (src.reload, src.token, src.invalidate, victim.close, src.subscribe(print)):
            try:
                call()
            except (TokenError, RuntimeError):
                pass

Cycle()
print("exiting")
"""


def test_finalizers_at_interpreter_shutdown_never_wait_for_a_lock(
    vol: tuple[ProjectedVolume, Kubelet],
) -> None:
    """Daemon threads are frozen at shutdown, perhaps holding one of our locks: finalizers that
    the last collections run and that call into sa-token must not wait for it (the process
    would never exit). Broken on purpose (no shutdown check in `_locks`), the child hangs."""
    volume, _ = vol
    proc = subprocess.run(
        [PYTHON, "-c", _SHUTDOWN, str(volume.token_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0 and "Timeout" not in proc.stderr, proc.stderr[-4000:]
    assert proc.stdout.strip() == "exiting"
    assert "finalizer ran" in proc.stderr  # at shutdown, not before "exiting"


def test_no_clock_or_logging_runs_under_a_library_lock(vol: tuple[ProjectedVolume, Kubelet]) -> None:
    """An injected clock and the log handlers are called with no library lock held."""
    import logging

    volume, kubelet = vol
    held_in_clock: list[bool] = []
    held_in_log: list[bool] = []
    files: list[Any] = []

    def clock() -> float:
        held_in_clock.append(any(f.lock.held() for f in files) or HUB.lock.held())
        return time.time()

    class Probe(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held_in_log.append(any(f.lock.held() for f in files) or HUB.lock.held())

    probe = Probe()
    logging.getLogger("sa_token").addHandler(probe)
    try:
        src = TokenSource(volume.token_path, audience=AUD, clock=clock, watch=False)
        files.append(src._file)
        volume.rotate("garbage")  # a failed re-read: warned
        with pytest.raises(TokenError):
            src.reload()
        kubelet.rotate()
        src.reload()
        src.close()
    finally:
        logging.getLogger("sa_token").removeHandler(probe)
    assert held_in_clock and not any(held_in_clock)
    assert held_in_log and not any(held_in_log)


# ----------------------------------------------------------------------- 2. transient ------
def _can_limit_inotify() -> bool:
    try:
        return (
            subprocess.run(
                ["unshare", "-Ur", "sh", "-c", "echo 1 > /proc/sys/user/max_inotify_instances"],
                check=False,
                capture_output=True,
                timeout=10,
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        return False


_LIMITED = ("unshare", "-Ur", "sh", "-c", 'echo 0 > /proc/sys/user/max_inotify_instances && exec "$@"', "sh")

_EMFILE = """
import json, sys, time
from sa_token import TokenSource
from sa_token._hub import HUB
from sa_token.testing import ProjectedVolume
vol = ProjectedVolume(sys.argv[1])
vol.rotate(sys.argv[2])
src = TokenSource(vol.token_path)                 # inotify_init1: EMFILE (the instance limit)
before = src.watching
with open("/proc/sys/user/max_inotify_instances", "w") as f:
    f.write("8")                                  # the limit is raised: the retry succeeds
deadline = time.monotonic() + 10
while not src.watching and time.monotonic() < deadline:
    time.sleep(0.01)
later = TokenSource(vol.token_path)
t0 = time.monotonic()
vol.rotate(sys.argv[3])  # watched again: the kit leaves it to inotify
while src.token() != sys.argv[3] and time.monotonic() < t0 + 5:
    time.sleep(0.005)
print(json.dumps({"before": before, "after": src.watching, "later": later.watching,
                  "seen": src.token() == sys.argv[3], "instances": HUB.stats()["inotify_instances"]}))
"""


@pytest.mark.skipif(not _can_limit_inotify(), reason="needs unshare -Ur and per-user-namespace inotify limits")
def test_an_inotify_instance_failure_is_retried_not_remembered(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    """inotify_init1 fails with EMFILE (the user's instance limit, for real); once an instance
    can be made, the retry with backoff arms the watches: the existing source and later ones
    are watched again, and a rotation is picked up by inotify (refresh_interval is 300 s)."""
    a, b = (token_issuer.issue(audiences=[AUD]) for _ in range(2))
    result = _run(_EMFILE, str(tmp_path / "vol"), a, b, prefix=_LIMITED)
    assert result == {"before": False, "after": True, "later": True, "seen": True, "instances": 1}


def test_a_subscriber_thread_that_cannot_start_is_retried(
    vol: tuple[ProjectedVolume, Kubelet], monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """A momentary pids limit when a delivery thread starts: reload() still returns the good
    token, and the callback gets it once a thread can start (retried with backoff)."""
    volume, kubelet = vol
    src = TokenSource(volume.token_path, audience=AUD, watch=False)
    got: list[Token] = []
    src.subscribe(got.append)
    real_start = threading.Thread.start
    failures = [1]

    def start(self: threading.Thread) -> None:
        if self.name.startswith("sa-token-subscribers") and failures:
            failures.pop()
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    new = kubelet.rotate()
    assert src.reload().value == new  # no RuntimeError from the failed start
    assert wait_for(lambda: [t.value for t in got] == [new], timeout=5)
    assert sa_token_warnings(caplog, "cannot start the thread that calls the subscribers")
    newer = kubelet.rotate()
    src.reload()
    assert wait_for(lambda: [t.value for t in got] == [new, newer], timeout=5)
    src.close()


_NO_THREAD = """
import json, sys, threading
from sa_token import ThreadStartError, TokenSource
from sa_token._hub import HUB
real = threading.Thread.start
def start(self):
    if self.name == "sa-token-watcher":
        raise RuntimeError("can't start new thread")
    real(self)
threading.Thread.start = start
try:
    TokenSource(sys.argv[1])
    error = None
except ThreadStartError as exc:
    error = [str(exc), exc.reason, isinstance(exc, RuntimeError)]
left = dict(HUB.files)
threading.Thread.start = real
src = TokenSource(sys.argv[1])
print(json.dumps({"error": error, "left": list(left), "alive": HUB.watcher.thread.is_alive(), "ok": bool(src.token())}))
"""


def test_a_watcher_thread_that_cannot_start_fails_typed_and_leaves_nothing(
    vol: tuple[ProjectedVolume, Kubelet],
) -> None:
    volume, _ = vol
    result = _run(_NO_THREAD, str(volume.token_path))
    message, reason, is_runtime = result["error"]
    assert reason == "thread-unavailable" and is_runtime and "RLIMIT_NPROC" in message
    assert result["left"] == [] and result["alive"] and result["ok"]


def test_a_refresh_interval_past_poll_s_range_breaks_no_pickup(
    tmp_path: Path, token_issuer: TokenIssuer, caplog
) -> None:
    """refresh_interval = 30 days (and a 60-day token): the heap's next deadline is past what
    poll() takes (24.8 days of milliseconds); another file's rotation is still picked up."""
    long_vol = ProjectedVolume(tmp_path / "long")
    long_vol.rotate(token_issuer.issue(audiences=[AUD], expiration_seconds=60 * 86400))
    other = ProjectedVolume(tmp_path / "other")
    other.rotate(token_issuer.issue(audiences=[AUD]))
    with TokenSource(long_vol.token_path, refresh_interval=30 * 86400.0), TokenSource(
        other.token_path
    ) as watched:
        HUB._poke()
        time.sleep(0.2)  # the thread sleeps on the 30-day deadline now
        new = token_issuer.issue(audiences=[AUD])
        other.rotate(new)
        assert wait_for(lambda: watched.token() == new, timeout=3)
    assert not sa_token_warnings(caplog, "OverflowError")


def test_a_dropped_source_releases_its_deadline(vol: tuple[ProjectedVolume, Kubelet]) -> None:
    volume, _ = vol
    keep = TokenSource(volume.token_path, audience=AUD)
    before = HUB.stats()["deadlines"]
    dropped = TokenSource(volume.token_path, audience=AUD, refresh_interval=200.0)
    assert HUB.stats()["deadlines"] == before + 1
    del dropped
    assert wait_for(lambda: gc.collect() == 0 and HUB.stats()["deadlines"] == before, timeout=5)
    keep.close()


def test_an_invalid_token_looks_at_the_file_before_raising(
    vol: tuple[ProjectedVolume, Kubelet], clock: FakeClock
) -> None:
    """watch=False, the token expired and the last re-read failed (no retry for 5 s): a file
    the kubelet rotated since is served by the next token() call. An unchanged file is not
    read again on every call."""
    volume, kubelet = vol
    kubelet.rotate(now=clock.now, expiration_seconds=600)
    src = TokenSource(volume.token_path, audience=AUD, clock=clock, watch=False)
    clock.advance(601)
    with pytest.raises(TokenExpiredError):
        src.token()  # re-read (the deadline passed): the same expired token
    reads = src.status().reads + src.status().failures
    with pytest.raises(TokenExpiredError):
        src.token()  # unchanged file: a stat, no read
    assert src.status().reads + src.status().failures == reads
    new = kubelet.rotate(now=clock.now, expiration_seconds=600)
    assert src.token() == new
    src.close()


_FORK = """
import json, os, sys, threading, time
from sa_token import TokenSource
from sa_token._hub import HUB
from sa_token.testing import ProjectedVolume
from sa_token.testing import inotify_instances as inotify_fds  # the kit's count, from /proc
vol = ProjectedVolume(sys.argv[1])
src = TokenSource(vol.token_path)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    at_fork = {"inotify": inotify_fds(), "threads": threading.active_count(),
               "watcher": HUB.watcher.thread is not None}
    time.sleep(0.3)
    idle = {"inotify": inotify_fds(), "threads": threading.active_count()}
    first = src.token()
    used = {"inotify": inotify_fds(), "watcher": HUB.watcher.thread is not None and HUB.watcher.thread.is_alive()}
    vol.rotate(sys.argv[3])
    deadline = time.monotonic() + 5
    while src.token() != sys.argv[3] and time.monotonic() < deadline:
        time.sleep(0.005)
    used["seen"] = src.token() == sys.argv[3]
    os.write(w, json.dumps({"at_fork": at_fork, "idle": idle, "used": used}).encode())
    os._exit(0)
os.close(w)
data = b""
while True:
    chunk = os.read(r, 65536)
    if not chunk:
        break
    data += chunk
os.waitpid(pid, 0)
print(data.decode())
"""


def test_a_forked_child_starts_nothing_until_its_first_use(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    """A fork (a Pool worker, a preexec_fn child) makes no inotify instance and no thread; the
    child's first token() makes them, and the child keeps following rotations."""
    volume = ProjectedVolume(tmp_path / "v")
    volume.rotate(token_issuer.issue(audiences=[AUD]))
    result = _run(_FORK, str(volume.directory), "", token_issuer.issue(audiences=[AUD]))
    assert result["at_fork"] == {"inotify": 0, "threads": 1, "watcher": False}
    assert result["idle"] == {"inotify": 0, "threads": 1}
    assert result["used"] == {"inotify": 1, "watcher": True, "seen": True}


class _Exchange:
    def __init__(self) -> None:
        self.logins = 0
        self.gate = threading.Event()
        self.gate.set()

    def login(self, token: Token) -> Any:
        from sa_token._lease import Grant

        self.gate.wait(10)
        self.logins += 1
        return Grant(f"cred-{self.logins}", 3600.0, True)

    def renew(self, credential: Any) -> Any:
        from sa_token._lease import Grant

        return Grant(credential, 3600.0, True)

    def error(self, message: str, *, reason: str, transient: bool = False) -> Any:
        from sa_token._lease import ExchangeError

        return ExchangeError(message, reason=reason, transient=transient)


def test_a_forked_keeper_logs_in_at_the_child_s_first_use(vol: tuple[ProjectedVolume, Kubelet]) -> None:
    volume, _ = vol
    src = TokenSource(volume.token_path, audience=AUD)
    exchange = _Exchange()
    keeper = LeaseKeeper(src, exchange, name="test")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            time.sleep(0.3)
            idle = exchange.logins
            lease = keeper.current()  # the parent's credential, at once; the child logs in
            wait_for(lambda: exchange.logins == 2, timeout=5)
            os.write(w, json.dumps([idle, lease.credential, exchange.logins]).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = os.read(r, 1000)
    os.waitpid(pid, 0)
    # The parent made login 1 (the child's counter starts there): none at the fork, the child's
    # own (2) only once it used the keeper, which answered with the parent's at once meanwhile.
    assert json.loads(data) == [1, "cred-1", 2]
    keeper.close()
    src.close()


def test_close_while_a_login_is_in_flight_hands_the_late_credential_over(
    vol: tuple[ProjectedVolume, Kubelet],
) -> None:
    volume, _ = vol
    src = TokenSource(volume.token_path, audience=AUD)
    exchange = _Exchange()
    late: list[Any] = []
    keeper = LeaseKeeper(src, exchange, name="test", background=False, on_late=late.append)
    first = keeper.current()
    exchange.gate.clear()
    def relogin_after_refusal() -> None:
        try:
            keeper.replace(first)
        except Exception:
            pass

    relogin = threading.Thread(target=relogin_after_refusal)
    relogin.start()
    assert wait_for(keeper._work.locked, timeout=5)
    keeper.close()  # the refused lease was dropped by replace(): nothing to revoke now
    exchange.gate.set()
    relogin.join(10)
    assert late == ["cred-2"] and keeper.peek() is None
    src.close()


# ----------------------------------------------------------------------- 3. one formatter --
def test_the_one_formatter_redacts_and_escapes(token_issuer: TokenIssuer) -> None:
    tok = token_issuer.issue(audiences=[AUD])
    shown = _fmt.text(f"echo: {tok} \x1b[2J \ud800 \u202e \u2028 \u2066.")
    assert tok not in shown and "<a token>" in shown
    for raw, escaped in (("\x1b", "\\x1b"), ("\ud800", "\\ud800"), ("\u202e", "\\u202e"), ("\u2028", "\\u2028")):
        assert raw not in shown and escaped in shown
    shown.encode("utf-8")  # no lone surrogate left: it encodes
    assert len(_fmt.text("x" * 1000, limit=50)) == 50


class _Vault(BaseHTTPRequestHandler):
    """Answers a Vault login by echoing the request, as some proxies do; records headers."""

    seen: list[dict[str, str]] = []  # noqa: RUF012 - one server per test, reset by the fixture
    answer_ok = False

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        type(self).seen.append(dict(self.headers))
        if type(self).answer_ok:
            out = json.dumps({"auth": {"client_token": "hvs.SECRET", "accessor": "acc-1",
                                       "policies": ["default", "app"], "lease_duration": 3600,
                                       "renewable": True, "token_type": "service"}}).encode()
            self.send_response(200)
        else:
            out = json.dumps({"errors": [f"invalid request: {body}"]}).encode()
            self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def echo_vault() -> Any:
    _Vault.seen = []
    _Vault.answer_ok = False
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Vault)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_vault_echoing_the_login_never_shows_the_token(
    vol: tuple[ProjectedVolume, Kubelet], echo_vault: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("hvac")
    from sa_token.vault import VaultAuth, VaultLoginError

    volume, kubelet = vol
    src = TokenSource(volume.token_path, audience=AUD)
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{echo_vault.server_address[1]}")
    monkeypatch.setenv("VAULT_NAMESPACE", "team-a")
    with pytest.raises(VaultLoginError) as info:
        VaultAuth(src, role="app")  # url from VAULT_ADDR
    err = info.value
    token = kubelet.current
    assert token is not None
    for text in (str(err), repr(err), err.server_message or ""):
        assert token not in text and token.split(".")[1] not in text
    assert "<a token>" in (err.server_message or "")
    assert _Vault.seen[-1].get("X-Vault-Namespace") == "team-a"
    src.close()


def test_vault_needs_an_address(vol: tuple[ProjectedVolume, Kubelet], monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("hvac")
    from sa_token.vault import VaultAuth

    monkeypatch.delenv("VAULT_ADDR", raising=False)
    with TokenSource(vol[0].token_path, audience=AUD) as src, pytest.raises(ConfigurationError, match="VAULT_ADDR"):
        VaultAuth(src, role="app")


def test_vault_login_line_says_the_credential_in_words(
    vol: tuple[ProjectedVolume, Kubelet], echo_vault: Any, caplog
) -> None:
    pytest.importorskip("hvac")
    from sa_token.vault import VaultAuth

    _Vault.answer_ok = True
    with TokenSource(vol[0].token_path, audience=AUD) as src:
        auth = VaultAuth(src, url=f"http://127.0.0.1:{echo_vault.server_address[1]}", role="app")
        auth.close()
    (line,) = [r.getMessage() for r in caplog.records if "logged in" in r.getMessage()]
    assert "accessor acc-1" in line and "policies default, app" in line
    assert "_Issued" not in line and "hvs.SECRET" not in line


_INSPECT_CLAIMS = {"sub": "system:serviceaccount:default:\ud800x\u202eevil\u2028next"}


def test_inspect_shows_hostile_claims_escaped(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    path = tmp_path / "token"
    path.write_text(token_issuer.issue(audiences=[AUD], extra=_INSPECT_CLAIMS))
    proc = subprocess.run(
        [PYTHON, "-m", "sa_token", "inspect", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "\\ud800x\\u202eevil\\u2028next" in proc.stdout
    assert "\u202e" not in proc.stdout and "\u2028" not in proc.stdout and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------- 4. promises -------
def test_a_fifo_is_never_read(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    token = token_issuer.issue(audiences=[AUD])
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # keeps the FIFO open for the writer
    writer = os.open(fifo, os.O_WRONLY)
    os.write(writer, token.encode())
    try:
        with pytest.raises(TokenFileError) as info:
            TokenSource(fifo)
        assert info.value.reason == "not-a-file"
        with pytest.raises(TokenFileError):
            CABundle(fifo)
        assert os.read(reader, 100_000) == token.encode()  # not drained
    finally:
        os.close(writer)
        os.close(reader)


def test_time_time_is_looked_up_at_each_call(
    vol: tuple[ProjectedVolume, Kubelet], monkeypatch: pytest.MonkeyPatch
) -> None:
    volume, _ = vol
    src = TokenSource(volume.token_path, audience=AUD, watch=False)
    assert src.token()
    later = time.time() + 2 * 3600
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(TokenExpiredError):
        src.token()
    monkeypatch.undo()
    src.close()


def test_token_is_a_hashable_value(token_issuer: TokenIssuer) -> None:
    value = token_issuer.issue(audiences=[AUD])
    tok, same = parse_token(value), parse_token(value)
    assert tok == same and hash(tok) == hash(same) and len({tok, same}) == 1
    assert {tok: 1}[same] == 1
    assert copy.deepcopy(tok) == tok and copy.copy(tok) is tok
    assert pickle.loads(pickle.dumps(tok)) == tok and pickle.loads(pickle.dumps(tok)).claims == tok.claims
    assert value not in repr(tok) and value not in repr(copy.deepcopy({"t": tok}))


# ----------------------------------------------------------------------- 5. newcomer -------
_CORE_ONLY = """
import sys
sys.modules["jwt"] = None           # an app that installed the core only: no testing extra
sys.modules["cryptography"] = None
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", sys.argv[1]]))
"""


def test_the_pytest_plugin_loads_with_the_core_alone(tmp_path: Path) -> None:
    (tmp_path / "test_app.py").write_text("def test_plain():\n    assert True\n")
    proc = subprocess.run([PYTHON, "-c", _CORE_ONLY, str(tmp_path)], capture_output=True, text=True, timeout=60,
                          check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tmp_path / "test_kit.py").write_text("def test_kit(token_issuer):\n    pass\n")
    proc = subprocess.run([PYTHON, "-c", _CORE_ONLY, str(tmp_path / "test_kit.py")], capture_output=True,
                          text=True, timeout=60, check=False, cwd=tmp_path)
    assert proc.returncode == 1 and "pip install 'sa-token[testing]'" in proc.stdout


def _integrations() -> list[Any]:
    calls: list[Any] = []
    for module, call in (
        ("requests", lambda m, p: m.TokenAuth(p)),
        ("httpx", lambda m, p: m.TokenAuth(p)),
        ("aiohttp", lambda m, p: m.TokenMiddleware(p)),
        ("grpc", lambda m, p: m.call_credentials(p)),
        ("grpc", lambda m, p: m.aio_interceptor(p)),
        ("kopf", lambda m, p: m.login_handler(source=p)),
        ("vault", lambda m, p: m.VaultAuth(p, url="http://127.0.0.1:1", role="r")),
        ("aws", lambda m, p: m.boto3_session(p)),
        ("alibabacloud", lambda m, p: m.RRSACredentialsProvider(p)),
        ("azure", lambda m, p: m.WorkloadIdentityCredential(p)),
        ("google", lambda m, p: m.SubjectTokenSupplier(p)),
    ):
        calls.append(pytest.param(module, call, id=f"{module}-{len(calls)}"))
    return calls


@pytest.mark.parametrize(("module", "call"), _integrations())
def test_a_path_where_a_source_belongs_is_refused_at_once(module: str, call: Any, tmp_path: Path) -> None:
    import importlib

    try:
        mod = importlib.import_module(f"sa_token.{module}")
    except ImportError as exc:  # the integration's library is not installed here
        pytest.skip(str(exc))
    path = str(tmp_path / "token")
    with pytest.raises(TypeError, match=r"takes a TokenSource, not a path: pass TokenSource\("):
        call(mod, path)
    jwt_like = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
    with pytest.raises(TypeError) as info:
        call(mod, jwt_like)
    assert jwt_like not in str(info.value)


def test_boto3_session_reads_aws_region(tmp_path: Path, token_issuer: TokenIssuer, monkeypatch) -> None:
    pytest.importorskip("boto3")
    from sa_token.aws import AUDIENCE, boto3_session

    path = tmp_path / "token"
    path.write_text(token_issuer.issue(audiences=[AUDIENCE]))
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/app")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with TokenSource(path, audience=AUDIENCE) as src:
        session = boto3_session(src)
        assert session.region_name == "eu-west-3"
        assert session.client("s3").meta.region_name == "eu-west-3"  # no NoRegionError


def test_google_supplier_takes_the_source_s_audience(tmp_path: Path, token_issuer: TokenIssuer, monkeypatch) -> None:
    pytest.importorskip("google.auth")
    from sa_token.google import SubjectTokenSupplier

    audience = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k"
    path = tmp_path / "token"
    path.write_text(token_issuer.issue(audiences=[audience]))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    with TokenSource(path, audience=audience) as src:
        supplier = SubjectTokenSupplier(src)  # no credential configuration file needed
        assert supplier.audience == audience
        assert supplier.get_subject_token(None, None) == src.token()  # type: ignore[arg-type]


def test_check_figures_never_contradict_the_verdict(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    path = tmp_path / "token"
    path.write_text(token_issuer.issue(audiences=[AUD], expiration_seconds=596))
    proc = subprocess.run(
        [PYTHON, "-m", "sa_token", "check", str(path), "--min-remaining", "10m"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 1
    assert "expires in 9m5" in proc.stderr and "--min-remaining 10m00s" in proc.stderr
    assert "expires in 10m" not in proc.stderr


_NO_INOTIFY = """
import json, sys, tempfile, pathlib
from sa_token import TokenSource
from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer
volume = ProjectedVolume(pathlib.Path(tempfile.mkdtemp()) / "serviceaccount")
kubelet = Kubelet(volume, TokenIssuer(), audiences=["vault"], expiration_seconds=600)
kubelet.rotate()
with TokenSource(volume.token_path, audience="vault") as source:
    watching = source.watching
    new = kubelet.rotate()          # no sleep: the kit tells the source itself
    print(json.dumps({"watching": watching, "seen": source.token() == new}))
"""


@pytest.mark.skipif(not _can_limit_inotify(), reason="needs unshare -Ur and per-user-namespace inotify limits")
def test_the_kit_s_rotations_are_seen_at_once_without_inotify() -> None:
    """The README's runnable example on a machine without inotify (here: an instance limit of
    0): the kit's volume makes the source re-read on its swap."""
    assert _run(_NO_INOTIFY, prefix=_LIMITED) == {"watching": False, "seen": True}


_ORPHAN = """
import json, os, sys, time
sys.path.insert(0, "bench")
import bench_overhead
proc, port = bench_overhead._server(["-c", bench_overhead.GRPC_SERVER])
print(json.dumps({"pid": proc.pid}), flush=True)
os._exit(1)  # killed: no terminate() for the server
"""


def test_a_benchmark_s_server_dies_with_its_parent() -> None:
    pytest.importorskip("grpc")
    proc = subprocess.run([PYTHON, "-c", _ORPHAN], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    pid = json.loads(proc.stdout.strip().splitlines()[-1])["pid"]

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie whose parent is init waits to be reaped: it is gone for us
            return open(f"/proc/{pid}/stat").read().split()[2] == "Z"
        except OSError:
            return True

    assert wait_for(gone, timeout=10)

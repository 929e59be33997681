"""Shared fixtures. The test kit's own fixtures (``token_issuer``, ``projected_volume``,
``kubelet``) come from the ``sa_token.testing`` pytest plugin, as they do for users."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, Callable

import freezegun
import pytest

# The interpreter running the tests, as an absolute path: every test that starts a Python process
# uses it (through ``sys.executable``, made absolute here). With a relative PATH entry, as in the
# README's ``PATH=.venv/bin:$PATH ./scripts/test``, Python >= 3.11 sets ``sys.executable`` to the
# relative ``.venv/bin/python``, which a child started with another working directory (``cwd="/"``)
# cannot find. Doing it here, before any test module is imported, also covers code that reads
# ``sys.executable`` itself (multiprocessing's spawn, the examples and bench runners).
# gRPC's fork handlers (on by default) abort a forked child when another thread is inside gRPC
# at fork time; Python 3.9's subprocess forks through them (3.10+ uses vfork). Our children
# exec at once or never touch gRPC: gRPC's documented setting for that case (grpc/grpc
# doc/fork_support.md). Set before anything imports grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

PYTHON = os.path.abspath(sys.executable)
sys.executable = PYTHON


# freezegun scans every loaded module's attributes when time is frozen; the kubernetes client
# (>= 36) resolves its models lazily on attribute access, and building them under a frozen
# datetime fails half-way through that scan, leaving time frozen for the rest of the session.
freezegun.configure(extend_ignore_list=["kubernetes", "kubernetes_asyncio"])

# ----------------------------------------------------------------------- audit hook ------
# The one audit hook of the test session (a hook cannot be removed: each one more would slow
# every later test). What it records:
_OPENS: Counter[str] = Counter()  # opens per path (os.open and open() raise "open"): OpenCounter
_OPENS_LOCK = threading.Lock()
OPEN_THREADS: dict[str, list[int]] = {}
"""Paths a test put here as keys get the ident of every thread that opens them appended."""
WRITE_ROOTS: list[str] = []
"""Directories a test put here get every write under them recorded in `WRITE_HITS`, except by
the thread inside `writer()`."""
WRITE_HITS: list[str] = []
_WRITER = threading.local()
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_MUTATING_EVENTS = {
    "os.chmod", "os.chown", "os.rename", "os.remove", "os.rmdir", "os.symlink", "os.link",
    "os.mkdir", "os.utime", "os.truncate", "shutil.rmtree", "shutil.move", "shutil.copyfile",
}  # fmt: skip


OPEN_GATES: dict[str, OpenGate] = {}
"""Paths a test put here: a thread that opens one waits at its `OpenGate` (see `gate_opens`)."""


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and args and isinstance(args[0], str):
        with _OPENS_LOCK:
            _OPENS[args[0]] += 1
        if args[0] in OPEN_THREADS:
            OPEN_THREADS[args[0]].append(threading.get_ident())
        gate = OPEN_GATES.get(args[0])
        if gate is not None:
            gate.pass_through()
    if WRITE_ROOTS and (event == "open" or event in _MUTATING_EVENTS):
        _record_write(event, args)


def _record_write(event: str, args: tuple[Any, ...]) -> None:
    if getattr(_WRITER, "active", False):
        return
    path = args[0] if args else None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str) or not any(path.startswith(r) for r in WRITE_ROOTS):
        return
    if event == "open":
        mode, flags = (*args, None, None)[1:3]
        writes = (isinstance(flags, int) and flags & _WRITE_FLAGS) or (
            isinstance(mode, str) and any(c in mode for c in "wax+")
        )
        if not writes:
            return
    WRITE_HITS.append(f"{event} {path} by {threading.current_thread().name}")


sys.addaudithook(_audit)


@contextlib.contextmanager
def writer() -> Iterator[None]:
    """Writes by this thread (the simulated kubelet's) are not recorded in `WRITE_HITS`."""
    _WRITER.active = True
    try:
        yield
    finally:
        _WRITER.active = False


class OpenGate:
    """Holds threads that open a path, so that a test can act while a read is under way (inside
    the read, with whatever locks the reader holds)."""

    def __init__(self) -> None:
        self.entered = threading.Event()  # a thread is waiting at the gate
        self.released = threading.Event()

    def pass_through(self) -> None:
        if self.released.is_set():
            return
        self.entered.set()
        self.released.wait(10)


@contextlib.contextmanager
def gate_opens(path: object) -> Iterator[OpenGate]:
    """While inside, threads opening ``path`` wait until the test calls ``gate.released.set()``."""
    key = os.fspath(path)  # type: ignore[call-overload]
    gate = OPEN_GATES[key] = OpenGate()
    try:
        yield gate
    finally:
        gate.released.set()
        OPEN_GATES.pop(key, None)


class OpenCounter:
    """Counts real ``open`` calls on one path (through the interpreter's audit hooks)."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self._start = _OPENS[self.path]

    @property
    def count(self) -> int:
        with _OPENS_LOCK:
            return _OPENS[self.path] - self._start

    def reset(self) -> None:
        with _OPENS_LOCK:
            self._start = _OPENS[self.path]


@pytest.fixture
def count_opens() -> Callable[[object], OpenCounter]:
    return lambda path: OpenCounter(os.fspath(path))  # type: ignore[arg-type]


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.002) -> bool:
    """Poll until ``predicate()`` is true (bounded; no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class FakeClock:
    """An injectable ``time.time``: starts at the real time, moves only when told."""

    def __init__(self, start: float | None = None) -> None:
        # whole seconds, like the iat/exp the issuer mints from it
        self.now = float(int(time.time())) if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def _sa_token_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="sa_token")


def sa_token_warnings(caplog: pytest.LogCaptureFixture, containing: str = "") -> list[str]:
    """The messages of the library's WARNING-or-worse log records that contain ``containing``."""
    return [
        msg
        for r in caplog.records
        if (r.name == "sa_token" or r.name.startswith("sa_token.")) and r.levelno >= logging.WARNING
        for msg in [r.getMessage()]
        if containing in msg
    ]


def read_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The library's "re-read failed" warnings."""
    return sa_token_warnings(caplog, "re-read failed")

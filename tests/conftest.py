"""Shared fixtures. The test kit's own fixtures (``token_issuer``, ``projected_volume``,
``kubelet``) come from the ``sa_token.testing`` pytest plugin, as they do for users."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from typing import Callable

import pytest

# The interpreter running the tests, as an absolute path: every test that starts a Python process
# uses it (through ``sys.executable``, made absolute here). With a relative PATH entry, as in the
# README's ``PATH=.venv/bin:$PATH ./scripts/test``, Python >= 3.11 sets ``sys.executable`` to the
# relative ``.venv/bin/python``, which a child started with another working directory (``cwd="/"``)
# cannot find. Doing it here, before any test module is imported, also covers code that reads
# ``sys.executable`` itself (multiprocessing's spawn, the examples and bench runners).
PYTHON = os.path.abspath(sys.executable)
sys.executable = PYTHON

_OPENS: Counter[str] = Counter()
_OPENS_LOCK = threading.Lock()


def _audit(event: str, args: tuple[object, ...]) -> None:
    # os.open and open() raise the "open" audit event: a real count of file reads.
    if event == "open" and args and isinstance(args[0], str):
        with _OPENS_LOCK:
            _OPENS[args[0]] += 1


sys.addaudithook(_audit)


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

"""Helpers for the reliability tests (faults, fuzzing, soak, no-leak): injecting broken
generations into a projected volume, running a scenario in a child process (to drop privileges,
exhaust a per-user limit or break the watcher without touching the test process), and
snapshots of the process's threads and file descriptors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

from sa_token.testing import ProjectedVolume, assert_no_token, find_token, inotify_watches
from sa_token.testing import open_fds as fd_count
from sa_token.testing import token_parts as segments_of

__all__ = [
    "Secrets",
    "fd_count",
    "file_with",
    "inotify_watches",
    "publish",
    "run_child",
    "segments_of",
    "thread_names",
    "world_dir",
]


def publish(vol: ProjectedVolume, make: Callable[[Path], None]) -> Path:
    """Publish a generation whose token entry ``make(path)`` creates (a file with any bytes, a
    directory, a FIFO, a symlink...), with the kubelet's own atomic ``..data`` swap. Returns
    the new timestamped directory. The next ``vol.write``/``Kubelet.rotate`` removes it."""
    root = vol.directory
    ts = Path(tempfile.mkdtemp(prefix="..fault_", dir=root))
    os.chmod(ts, 0o755)
    make(ts / vol.token_key)
    tmp = root / "..data_tmp"
    os.symlink(ts.name, tmp)
    os.rename(tmp, root / "..data")
    return ts


def file_with(content: bytes) -> Callable[[Path], None]:
    def make(p: Path) -> None:
        p.write_bytes(content)

    return make


def thread_names() -> list[str]:
    return sorted(t.name for t in threading.enumerate())


class Secrets:
    """Every token minted in a test, and a scanner for any text against all of them."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    def add(self, token: Optional[str]) -> Optional[str]:
        if token:
            self.tokens.append(token)
        return token

    def find(self, text: str) -> list[str]:
        """Which pieces of which tokens ``text`` contains, described without quoting them."""
        return find_token(text, self.tokens)

    def assert_clean(self, text: str, what: str) -> None:
        assert_no_token(text, self.tokens, what=what)


def world_dir() -> Path:
    """A fresh directory every user can enter (pytest's tmp_path is 0700 root-only), for
    scenarios that run as another uid. The caller removes it."""
    d = Path(tempfile.mkdtemp(prefix="sa-token-rel-"))
    os.chmod(d, 0o755)
    return d


# Prepended to every child script: parameters, log capture, helpers; ``drop()`` switches to
# ``P["uid"]`` (call it after the imports the scenario needs).
_PRELUDE = '''
import json, logging, os, sys, time, threading
P = json.loads(sys.argv[1])
LOGS = []

def drop():
    # The interpreter lives under /root (0700) here: import everything first, then drop.
    if P.get("uid") is not None:
        os.setgroups([])
        os.setgid(P["uid"])
        os.setuid(P["uid"])


class _Capture(logging.Handler):
    def emit(self, record):
        LOGS.append([record.levelname, record.getMessage()])

_log = logging.getLogger("sa_token")
_log.addHandler(_Capture())
_log.setLevel(logging.DEBUG)

def wait_for(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.002)
    return bool(pred())

def done(**result):
    result["logs"] = LOGS
    sys.stdout.write("RESULT " + json.dumps(result) + "\\n")
    sys.stdout.flush()
    os._exit(0)
'''


def run_child(
    body: str, params: Optional[dict[str, Any]] = None, *, timeout: float = 30.0, prefix: Sequence[str] = ()
) -> dict[str, Any]:
    """Run ``body`` in a fresh interpreter (after the prelude above); it must call
    ``done(**result)``. Returns the result, with the child's ``sa_token`` log lines in
    ``result["logs"]`` as ``[level, message]`` pairs. ``prefix``: a command that runs the
    interpreter (``unshare ...``)."""
    script = _PRELUDE + textwrap.dedent(body)
    proc = subprocess.run(
        [*prefix, os.path.abspath(sys.executable), "-c", script, json.dumps(params or {})],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd="/",
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            result["stderr"] = proc.stderr
            return result
    raise AssertionError(f"child failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")

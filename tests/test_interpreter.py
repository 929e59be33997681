"""Tests that start Python processes find the interpreter however pytest was started.

The README's command is ``PATH=.venv/bin:$PATH ./scripts/test``: with that relative PATH entry,
Python >= 3.11 sets ``sys.executable`` to ``.venv/bin/python``, and a child started with
``cwd="/"`` (as tests/_reliability.py does) failed with ``FileNotFoundError``. tests/conftest.py
makes ``sys.executable`` absolute; this runs pytest exactly that way to prove it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _relative_path_env() -> tuple[dict[str, str], str]:
    """An environment whose PATH starts with the interpreter's directory, relative to ROOT."""
    bindir = os.path.dirname(sys.executable)  # absolute (conftest), symlinks kept: a venv's bin/
    rel = os.path.relpath(bindir, ROOT)
    if rel == ".":  # pragma: no cover - the interpreter lives in the checkout's root
        pytest.skip("the interpreter is in the checkout's root directory")
    assert not os.path.isabs(rel)
    env = {**os.environ, "PATH": f"{rel}{os.pathsep}{os.environ.get('PATH', '')}"}
    return env, os.path.basename(sys.executable)


def test_a_child_started_elsewhere_finds_the_interpreter() -> None:
    """What the tests that start Python processes rely on (also run by the test below, in a
    pytest started through a relative PATH entry)."""
    assert os.path.isabs(sys.executable)
    out = subprocess.run(
        [sys.executable, "-c", "print('child ok')"],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert out == "child ok\n"


def test_pytest_started_through_a_relative_path_entry() -> None:
    env, name = _relative_path_env()
    raw = subprocess.run(
        [name, "-c", "import sys; print(sys.executable)"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    if sys.version_info >= (3, 11):
        assert not os.path.isabs(raw), f"the situation this test recreates did not arise: {raw}"
    this = f"{Path(__file__).relative_to(ROOT)}::test_a_child_started_elsewhere_finds_the_interpreter"
    res = subprocess.run(
        [name, "-m", "pytest", "-q", "-p", "no:cacheprovider", this],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 passed" in res.stdout

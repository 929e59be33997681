"""Leak checks for tests: a token in text, and descriptors or inotify instances left open."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Optional

__all__ = ["assert_no_token", "find_token", "inotify_instances", "inotify_watches", "open_fds", "token_parts"]

# Shorter pieces are not looked for: a garbled test token split on dots can have pieces of a
# few characters, which any text may contain by chance. Real JWT segments are far longer.
MIN_PART = 8


def _named_parts(token: str) -> list[tuple[str, str]]:
    parts = token.split(".")
    named = [("the whole token", token)]
    if len(parts) == 3:
        header, payload, signature = parts
        named += [
            ("its header.payload", f"{header}.{payload}"),
            ("its header", header),
            ("its payload", payload),
            ("its signature", signature),
        ]
    elif len(parts) > 1:
        named += [(f"its part {i + 1}", part) for i, part in enumerate(parts)]
    return named


def token_parts(token: str, *, min_length: int = MIN_PART) -> list[str]:
    """The pieces of ``token`` that must never appear in text: the whole token, its
    ``header.payload`` (all but the signature) and each segment alone (the signature alone
    suffices to replay a token whose claims are known), those at least ``min_length`` long."""
    return [part for _, part in _named_parts(token) if len(part) >= min_length]


def find_token(text: str, tokens: Iterable[Optional[str]], *, min_length: int = MIN_PART) -> list[str]:
    """Which pieces of which of ``tokens`` (`token_parts`) ``text`` contains, described by name
    (``"token 2: its signature"``), never quoted."""
    found = []
    for i, token in enumerate(t for t in tokens if t):
        for name, part in _named_parts(token):
            if len(part) >= min_length and part in text:
                found.append(f"token {i + 1}: {name}")
    return found


def assert_no_token(text: str, tokens: Iterable[Optional[str]], *, what: str = "the text") -> None:
    """Fail (``AssertionError``) if ``text`` contains any piece of any of ``tokens``; the message
    says which piece, without quoting it. ``None`` and empty tokens are skipped.

    ```python
    assert_no_token(caplog.text + capsys.readouterr().err, [kubelet.current], what="the logs")
    ```
    """
    found = find_token(text, tokens)
    assert not found, f"{what} contains {', '.join(found)}"


def open_fds() -> int:
    """File descriptors open in this process (Linux: ``/proc/self/fd``)."""
    return len(os.listdir("/proc/self/fd"))


def _inotify_fds() -> list[str]:
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify":
                fds.append(fd)
        except OSError:  # closed meanwhile (the listing's own descriptor, too)
            continue
    return fds


def inotify_instances() -> int:
    """inotify instances open in this process (Linux: ``anon_inode:inotify`` descriptors),
    whatever the library's own bookkeeping says. The limit is per user, 128 by default."""
    return len(_inotify_fds())


def inotify_watches() -> int:
    """Watches held by this process's inotify instances, as the kernel counts them
    (``/proc/self/fdinfo``)."""
    n = 0
    for fd in _inotify_fds():
        try:
            with open(f"/proc/self/fdinfo/{fd}") as f:
                n += sum(line.startswith("inotify wd:") for line in f)
        except OSError:
            continue
    return n

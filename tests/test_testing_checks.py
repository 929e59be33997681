"""The test kit's leak checks: a token's pieces in text; descriptors and inotify instances."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sa_token import TokenSource
from sa_token.testing import (
    Kubelet,
    ProjectedVolume,
    assert_no_token,
    find_token,
    inotify_instances,
    inotify_watches,
    open_fds,
    token_parts,
)


def test_every_piece_of_a_token_is_found_and_never_quoted(kubelet: Kubelet) -> None:
    token = kubelet.current
    assert token is not None
    header, payload, signature = token.split(".")
    assert token_parts(token) == [token, f"{header}.{payload}", header, payload, signature]
    for piece, name in (
        (token, "the whole token"),
        (signature, "its signature"),
        (payload, "its payload"),
        (f"{header}.{payload}", "its header.payload"),
    ):
        text = f"log line: {piece}!"
        assert f"token 2: {name}" in find_token(text, [None, "", "x" * 40, token])
        with pytest.raises(AssertionError) as ei:
            assert_no_token(text, [token], what="the log")
        message = str(ei.value)
        assert message.startswith("the log contains token 1:") and name in message
        assert not find_token(message, [token])  # the failure does not quote what it found
    assert_no_token(
        "nothing here " + signature[:7], [token, None]
    )  # pieces under 8 characters are not looked for


def test_descriptor_and_inotify_counts(
    projected_volume: ProjectedVolume, kubelet: Kubelet, tmp_path: Path
) -> None:
    fds = open_fds()
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert open_fds() == fds + 1
    finally:
        os.close(fd)
    with TokenSource(projected_volume.token_path):
        assert inotify_instances() == 1  # one per process, however many sources
        assert inotify_watches() >= 1

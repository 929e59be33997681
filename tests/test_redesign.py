"""The house redesign (issue 20): the guarantees it gives by construction, each with a test that
fails without it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from sa_token import TokenSource
from sa_token._flow import BearerFlow, Reply
from sa_token.testing import TokenIssuer

AUD = "redesign"


def _write(path: Path, value: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(value)
    tmp.replace(path)


# ----------------------------------------------------------------------- the 401 flow ------
@pytest.mark.parametrize("offset", [0.0, 30 * 86400.0, -3 * 86400.0])
def test_a_401_rereads_a_rotated_file_whatever_the_source_s_clock(
    tmp_path: Path, token_issuer: TokenIssuer, offset: float
) -> None:
    """The bug of issue 20: a source with a ``clock=`` ahead of real time never re-read after a
    401 (the flow stamped the request with time.time(), the source compared its own clock)."""
    now = [time.time() + offset]
    path = tmp_path / "token"
    _write(path, token_issuer.issue(audiences=[AUD], now=now[0]))
    src = TokenSource(path, audience=AUD, clock=lambda: now[0], watch=False)
    try:
        attempt = BearerFlow(src, client="test").attempt(None)
        assert attempt is not None
        sent = attempt.step()
        assert sent is not None and sent.value == src.token()
        fresh_value = token_issuer.issue(audiences=[AUD], now=now[0])
        _write(path, fresh_value)  # rotated; no watch: only the 401 makes the source look
        fresh = attempt.step(Reply())
        assert fresh is not None and fresh.value == fresh_value
        assert attempt.step(Reply()) is None  # one retry per request
    finally:
        src.close()


def test_a_burst_of_401s_on_one_token_rereads_the_file_once(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    """invalidate_if is a compare-and-swap on the token that was sent: 50 requests rejected with
    the same token cause one re-read, not 50 (client-go's ResetTokenOlderThan, without clocks)."""
    path = tmp_path / "token"
    _write(path, token_issuer.issue(audiences=[AUD]))
    src = TokenSource(path, audience=AUD, watch=False)
    try:
        flow = BearerFlow(src, client="test")
        attempts = [flow.attempt(None) for _ in range(50)]
        sent = [a.step() for a in attempts if a is not None]
        assert len(sent) == 50
        reads = src.status().reads
        barrier = threading.Barrier(50)
        results: list[object] = []

        def rejected(i: int) -> None:
            barrier.wait()
            a = attempts[i]
            assert a is not None
            results.append(a.step(Reply()))

        threads = [threading.Thread(target=rejected, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [None] * 50  # the file holds the same token: nothing to retry with
        assert src.status().reads == reads + 1
    finally:
        src.close()


def test_invalidate_if_only_invalidates_the_token_it_names(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    path = tmp_path / "token"
    _write(path, token_issuer.issue(audiences=[AUD]))
    src = TokenSource(path, audience=AUD, watch=False)
    try:
        old = src.current()
        _write(path, token_issuer.issue(audiences=[AUD]))
        new = src.reload()
        assert src.invalidate_if(old) is False  # already replaced: nothing to do
        assert src.token_nowait() == new.value
        assert src.invalidate_if(new) is True
        assert src.token_nowait() is None  # the next token() re-reads
        assert src.token() == new.value
    finally:
        src.close()

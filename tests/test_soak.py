"""A short soak (issue 6): 16 threads take tokens and make authenticated requests to a real
local API server while a kubelet process rotates the token every 5 ms.

Zero expired, torn or empty tokens served (every distinct token is signature-checked), zero
failed requests, and no growth of the library's memory, threads or file descriptors.
``bench/soak.py --minutes N`` is the long version.
"""

from __future__ import annotations

import gc
import hashlib
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import jwt
import pytest
import requests

from _reliability import fd_count
from conftest import wait_for
from sa_token import Token, TokenSource
from sa_token.requests import TokenAuth
from sa_token.testing import Kubelet, KubeletProcess, ProjectedVolume, TokenIssuer
from sa_token.testing.apiserver import FakeAPIServer

AUD = "soak"
THREADS = 16
DURATION = 4.0  # seconds of load (plus 0.5 s of warm-up): ~1600 requests, ~700 rotations here
TRACED = 1.5  # the last seconds run under tracemalloc (it halves the throughput)
ROTATE_EVERY = 0.005
# Tokens minted up front for the kubelet process (signing ~1 ms each): more than it can write.
TOKENS = 800
# The library's own allocations (src/sa_token, not the test kit) may not grow by more than
# this between the warm-up and the end: a leak of even one small object per rotation or per
# request would exceed it over hundreds of rotations and thousands of requests.
MAX_LIB_GROWTH = 64 * 1024


def _lib_bytes(snapshot: tracemalloc.Snapshot) -> int:
    lib = snapshot.filter_traces([tracemalloc.Filter(True, "*/sa_token/*")])
    lib = lib.filter_traces([tracemalloc.Filter(False, "*/sa_token/testing/*")])
    return sum(s.size for s in lib.statistics("filename"))


@pytest.mark.slow
def test_soak_rotating_every_5ms(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    volume = ProjectedVolume(tmp_path / "soak")
    kubelet = Kubelet(volume, token_issuer, audiences=[AUD], expiration_seconds=600)
    kubelet.rotate()
    tokens = [kubelet.mint() for _ in range(TOKENS)]
    minted = set(tokens) | {kubelet.current}
    with TokenSource(volume.token_path, audience=AUD):  # the hub's two threads live on from here
        pass
    gc.collect()
    fds0, threads0 = fd_count(), threading.active_count()
    server = FakeAPIServer(token_issuer, audiences=[AUD], tls=False)

    src = TokenSource(volume.token_path, audience=AUD)
    rotations_seen = Counter[str]()
    unsubscribe = src.subscribe(lambda tok: rotations_seen.update(["n"]))
    verified: dict[bytes, bool] = {}  # by digest: holding the strings would count as growth
    verify_lock = threading.Lock()
    problems: list[str] = []
    statuses: Counter[int] = Counter()
    served = Counter[str]()
    stop = threading.Event()
    auth = TokenAuth(src, hosts=[f"127.0.0.1:{server.port}"])

    def check(token: str) -> None:
        key = hashlib.sha256(token.encode()).digest()
        if key in verified:
            return
        if token not in minted:
            problems.append("served a token that was never written (torn or empty)")
        try:
            token_issuer.verify(token, audience=AUD)  # signature, exp, nbf, aud: not torn, not expired
            ok = True
        except jwt.InvalidTokenError as exc:
            ok = False
            problems.append(f"served an invalid token: {type(exc).__name__}")
        with verify_lock:
            verified[key] = ok

    def worker() -> None:
        with requests.Session() as session:
            session.auth = auth
            local: Counter[int] = Counter()
            n = 0
            while not stop.is_set():
                try:
                    token = src.token()
                    if not token:
                        problems.append("served an empty token")
                    check(token)
                    r = session.get(f"{server.url}/echo", timeout=10)
                    local[r.status_code] += 1
                except Exception as exc:  # any failure of the library is a soak failure
                    problems.append(f"{type(exc).__name__}: {exc}")
                n += 1
            with verify_lock:
                statuses.update(local)
                served["calls"] += n

    # The kubelet as its own process (as on a node): 16 client threads holding the GIL would
    # otherwise starve a kubelet thread in this process, which gives it up at every file operation.
    kubelet_proc = KubeletProcess(volume)
    kubelet_proc.start(every=ROTATE_EVERY, tokens=tokens)
    workers = [threading.Thread(target=worker, name=f"soak-{i}") for i in range(THREADS)]
    for w in workers:
        w.start()
    time.sleep(0.5)  # warm-up: connection pools, caches, first allocations
    rotations_at_start = kubelet_proc.rotations
    start = time.monotonic()
    traced = False
    traced_at = 0.0
    base: int | None = None
    while time.monotonic() < start + DURATION:
        time.sleep(0.1)
        server.clear()  # the test server's own request log must not count as growth
        if not traced and time.monotonic() > start + DURATION - TRACED:
            tracemalloc.start()
            traced = True
            traced_at = time.monotonic()
        if traced and base is None and time.monotonic() > traced_at + 0.5:
            # Buffers in steady use (the watcher's read buffer, the current token) were
            # allocated again by now; what the library holds at the end beyond this is growth.
            base = _lib_bytes(tracemalloc.take_snapshot())
    stop.set()
    for w in workers:
        w.join(30)
    rotations = kubelet_proc.stop() - rotations_at_start
    kubelet_proc.close()
    final = Path(volume.token_path).read_text()
    assert wait_for(lambda: src.token() == final), "the last rotation was picked up"
    gc.collect()
    assert base is not None
    grown = _lib_bytes(tracemalloc.take_snapshot()) - base
    tracemalloc.stop()
    live_tokens = sum(isinstance(o, Token) for o in gc.get_objects())

    unsubscribe()
    src.close()
    server.close()
    gc.collect()
    assert wait_for(lambda: threading.active_count() == threads0, timeout=5.0), threading.enumerate()
    assert wait_for(lambda: fd_count() == fds0, timeout=5.0)

    print(
        f"soak: {sum(statuses.values())} requests {dict(statuses)}, {served['calls']} token() calls, "
        f"{rotations} rotations ({rotations_seen['n']} seen by subscribers), {len(verified)} distinct "
        f"tokens verified, library memory growth {grown} bytes, {live_tokens} Token objects alive"
    )
    assert problems == []
    assert sum(statuses.values()) > 500, statuses
    assert set(statuses) == {200}, f"failed requests: {statuses}"
    assert rotations > 200
    assert live_tokens < 10, "parsed tokens are not retained"
    # Swaps 5 ms apart coalesce (the source reads the newest generation once), more so while
    # 16 threads compete for the GIL with the watcher thread.
    assert rotations_seen["n"] > 50, "rotations reach subscribers"
    assert all(verified.values()) and len(verified) > 20
    assert grown < MAX_LIB_GROWTH, f"the library's memory grew by {grown} bytes"

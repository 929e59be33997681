#!/usr/bin/env python3
"""The long soak (GitHub issue 6): ``tests/test_soak.py`` for minutes instead of seconds.

    python bench/soak.py --minutes N [--threads 16] [--rotate-every 0.005] [--tls] [--json PATH]

Client threads call ``TokenSource.token()`` and make authenticated requests
(``sa_token.requests.TokenAuth``) to a local ``FakeAPIServer`` that verifies every token (RS256
signature, ``exp``, ``aud``) while a kubelet in another process (``sa_token.testing.KubeletProcess``,
as on a node) mints and publishes a new token every few milliseconds.
Every distinct token served is verified once more on the client side (a torn, empty or expired
token would fail).

Prints, once a minute and at the end: requests (and their status codes), rotations written and
seen, failures, RSS (start, max, end, growth after the first minute's warm-up), file
descriptors and threads before and after. Exit status 1 if anything failed: a failed request,
an invalid token served, an exception, or threads/fds not back to their starting counts.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sa_token.testing import open_fds

AUDIENCE = "soak"
# Token lifetime: the kubelet's minimum (10 min), so nothing expires during a short run unless a
# stale token is served; a long run still exercises expiry of the tokens it rotated away from.
EXPIRATION_SECONDS = 600
# How often the progress line is printed (and the server's request log trimmed).
REPORT_EVERY = 60.0
# Verified tokens remembered (to verify each distinct token once): bounded, so that the
# harness's own memory does not grow with the number of rotations and hide a library leak.
VERIFIED_CACHE = 256


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run(minutes: float, threads: int, rotate_every: float, tls: bool) -> dict[str, Any]:
    import jwt
    import requests

    from sa_token import TokenSource
    from sa_token.requests import TokenAuth
    from sa_token.testing import Kubelet, KubeletProcess, ProjectedVolume, TokenIssuer
    from sa_token.testing.apiserver import FakeAPIServer

    tmp = Path(tempfile.mkdtemp(prefix="sa-token-soak-"))
    issuer = TokenIssuer()
    volume = ProjectedVolume(tmp / "token")
    kubelet = Kubelet(volume, issuer, audiences=[AUDIENCE], expiration_seconds=EXPIRATION_SECONDS)
    kubelet.rotate()
    with TokenSource(volume.token_path, audience=AUDIENCE):  # the hub's threads live on from here
        pass
    gc.collect()
    fds0, threads0, rss0 = open_fds(), threading.active_count(), _rss_kib()

    server = FakeAPIServer(issuer, audiences=[AUDIENCE], tls=tls)
    ca_file = server.write_ca(tmp / "ca.crt") if tls else None
    src = TokenSource(volume.token_path, audience=AUDIENCE)
    seen = Counter[str]()
    unsubscribe = src.subscribe(lambda _tok: seen.update(["rotations"]))
    auth = TokenAuth(src, hosts=[f"127.0.0.1:{server.port}"])
    lock = threading.Lock()
    verified: collections.OrderedDict[str, bool] = collections.OrderedDict()
    counts = Counter[str]()
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    calls = Counter[str]()
    stop = threading.Event()

    def check(token: str) -> None:
        with lock:
            if token in verified:
                return
        try:
            issuer.verify(token, audience=AUDIENCE)
            ok = True
        except jwt.InvalidTokenError as exc:
            ok = False
            with lock:
                failures.append(f"invalid token served: {type(exc).__name__}")
        with lock:
            if token not in verified:
                verified[token] = ok
                counts["verified"] += 1
                counts["invalid"] += not ok
                while len(verified) > VERIFIED_CACHE:
                    verified.popitem(last=False)

    def worker() -> None:
        local: Counter[int] = Counter()
        n = 0
        with requests.Session() as session:
            session.auth = auth
            session.verify = ca_file or True
            while not stop.is_set():
                try:
                    token = src.token()
                    if not token:
                        raise AssertionError("empty token served")
                    check(token)
                    local[session.get(f"{server.url}/echo", timeout=30).status_code] += 1
                except Exception as exc:  # any failure is a soak failure
                    with lock:
                        failures.append(f"{type(exc).__name__}: {exc}")
                n += 1
                if n % 200 == 0:
                    with lock:
                        statuses.update(local)
                        calls["token"] += 200
                    local.clear()
        with lock:
            statuses.update(local)
            calls["token"] += n % 200

    kubelet_proc = KubeletProcess(volume, issuer, audiences=[AUDIENCE], expiration_seconds=EXPIRATION_SECONDS)
    kubelet_proc.start(every=rotate_every)
    workers = [threading.Thread(target=worker, name=f"soak-{i}", daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    start = time.monotonic()
    end = start + minutes * 60
    rss_max = rss_after_warmup = _rss_kib()
    next_report = start + REPORT_EVERY
    while time.monotonic() < end:
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        server.clear()  # the server's request log is the test kit's, not the library's memory
        rss = _rss_kib()
        rss_max = max(rss_max, rss)
        if time.monotonic() - start < REPORT_EVERY:
            rss_after_warmup = rss
        if time.monotonic() >= next_report:
            next_report += REPORT_EVERY
            with lock:
                done = sum(statuses.values())
                bad = len(failures)
            print(
                f"[{(time.monotonic() - start) / 60:5.1f} min] requests {done}, rotations "
                f"{kubelet_proc.rotations}, failures {bad}, RSS {rss / 1024:.1f} MiB",
                flush=True,
            )
    stop.set()
    for w in workers:
        w.join(60)
    written = kubelet.rotations + kubelet_proc.stop()
    kubelet_proc.close()
    final = Path(volume.token_path).read_text()
    deadline = time.monotonic() + 5
    while src.token() != final and time.monotonic() < deadline:
        time.sleep(0.01)
    last_picked_up = src.token() == final
    rss_end = _rss_kib()
    unsubscribe()
    src.close()
    server.close()
    gc.collect()
    time.sleep(0.5)
    result = {
        "minutes": minutes,
        "threads": threads,
        "rotate_every_s": rotate_every,
        "tls": tls,
        "requests": sum(statuses.values()),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "token_calls": calls["token"],
        "rotations_written": written,
        "rotations_seen_by_subscriber": seen["rotations"],
        "tokens_verified": counts["verified"],
        "invalid_tokens_served": counts["invalid"],
        "failures": len(failures),
        "failure_samples": sorted(set(failures))[:10],
        "last_rotation_picked_up": last_picked_up,
        "rss_kib": {"start": rss0, "after_warmup": rss_after_warmup, "max": rss_max, "end": rss_end},
        "rss_growth_after_warmup_kib": rss_end - rss_after_warmup,
        "fds": {"before": fds0, "after": open_fds()},
        "threads_count": {"before": threads0, "after": threading.active_count()},
    }
    for p in sorted(tmp.rglob("*"), reverse=True):
        try:
            p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
        except OSError:
            pass
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    p.add_argument("--threads", type=int, default=16, help="client threads (default 16)")
    p.add_argument(
        "--rotate-every", type=float, default=0.005, help="seconds between rotations (default 0.005)"
    )
    p.add_argument("--tls", action="store_true", help="HTTPS (a trustme CA) instead of plain HTTP")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    args = p.parse_args(argv)
    result = run(args.minutes, args.threads, args.rotate_every, args.tls)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    ok = (
        result["failures"] == 0
        and result["invalid_tokens_served"] == 0
        and set(result["statuses"]) <= {"200"}
        and result["last_rotation_picked_up"]
        and result["fds"]["after"] == result["fds"]["before"]
        and result["threads_count"]["after"] == result["threads_count"]["before"]
    )
    print("soak:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

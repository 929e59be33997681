#!/usr/bin/env python3
"""Per-request cost of ``sa_token.requests.TokenAuth`` and ``sa_token.httpx.TokenAuth``,
against the same client with a static ``Authorization`` header, on a local keep-alive HTTP
server in its own process (``_http_server.py``).

Requests alternate one by one (each pair in random order), each timed on its own; a round's
ratio is the ratio of the two medians, and the result the median over rounds.
Target: ``TokenAuth`` costs < 2% per request over a static header.
"""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

from _common import AUDIENCE, BENCH, Fixture, pct, sizes, standalone, target

SIZES = {
    "full": {"rounds": 61, "block": 40},
    "quick": {"rounds": 15, "block": 30},
    "smoke": {"rounds": 3, "block": 5},
}
RATIO_MAX = 1.02  # TokenAuth costs < 2% per request over a static header
CLIENTS = ("requests", "httpx")
# Two rounds run first and are discarded: connection set-up, the first allocations.
WARMUP_ROUNDS = 2


def run(*, quick: bool) -> dict[str, Any]:
    from sa_token import TokenSource
    from sa_token.testing import ProjectedVolume

    sz = sizes(SIZES, quick)
    results: dict[str, Any] = {}
    with Fixture() as fx:
        vol = ProjectedVolume(fx.root / "http")
        token = fx.pool[0]
        vol.write({"token": token, "namespace": "default"})
        server = subprocess.Popen(
            [sys.executable, str(BENCH / "_http_server.py")], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            url = f"http://127.0.0.1:{int(server.stdout.readline())}/"
            with TokenSource(vol.token_path, audience=AUDIENCE) as src:
                for client in CLIENTS:
                    try:
                        results[client] = _client(client, url, src, token, sz)
                    except ImportError as exc:
                        results[client] = {"skipped": f"{type(exc).__name__}: {exc}"}
        finally:
            server.terminate()
            server.wait()
    return results


def _client(client: str, url: str, src: Any, token: str, sz: dict[str, Any]) -> dict[str, Any]:
    static_headers = {"Authorization": f"Bearer {token}"}
    if client == "requests":
        import requests

        from sa_token.requests import TokenAuth as RequestsAuth

        # trust_env off on both: a session without ``auth`` otherwise looks ~/.netrc up on every
        # request (and both re-read proxy variables), which would make TokenAuth look cheaper than free.
        with_auth = requests.Session()
        with_auth.trust_env = False
        with_auth.auth = RequestsAuth(src)
        static = requests.Session()
        static.trust_env = False
        static.headers.update(static_headers)
        check = with_auth.get(url).request.headers["Authorization"]
        sides: dict[str, Callable[[], Any]] = {
            "token_auth": lambda: with_auth.get(url),
            "static_header": lambda: static.get(url),
        }
        closers: list[Callable[[], None]] = [with_auth.close, static.close]
    else:
        import httpx

        from sa_token.httpx import TokenAuth as HttpxAuth

        with_auth_x = httpx.Client(auth=HttpxAuth(src))
        static_x = httpx.Client(headers=static_headers)
        check = with_auth_x.get(url).request.headers["Authorization"]
        sides = {"token_auth": lambda: with_auth_x.get(url), "static_header": lambda: static_x.get(url)}
        closers = [with_auth_x.close, static_x.close]
    assert check == f"Bearer {token}"
    try:
        return _alternate(sides, sz)
    finally:
        for c in closers:
            c()


def _alternate(sides: dict[str, Callable[[], Any]], sz: dict[str, Any]) -> dict[str, Any]:
    # Requests alternate one by one (in random order within each pair), each timed on its own:
    # drift in machine load hits both sides alike, and medians shed GC pauses and scheduler
    # hiccups. A round's ratio is the ratio of its two medians.
    block = sz["block"]
    per_round: dict[str, list[float]] = {k: [] for k in sides}
    ratios: list[float] = []
    clock = time.perf_counter
    for r in range(sz["rounds"] + WARMUP_ROUNDS):
        times: dict[str, list[float]] = {k: [] for k in sides}
        for _ in range(block):
            order = (
                ("token_auth", "static_header") if random.random() < 0.5 else ("static_header", "token_auth")
            )
            for name in order:
                t0 = clock()
                resp = sides[name]()
                times[name].append(clock() - t0)
                assert resp.status_code == 200
        if r >= WARMUP_ROUNDS:
            meds = {k: statistics.median(v) for k, v in times.items()}
            for k, v in meds.items():
                per_round[k].append(v)
            ratios.append(meds["token_auth"] / meds["static_header"])
    return {
        "rounds": sz["rounds"],
        "requests_per_round": block,
        "median_us": {k: statistics.median(v) * 1e6 for k, v in per_round.items()},
        "ratio_median": statistics.median(ratios),
        "ratio_p25": pct(ratios, 25),
        "ratio_p75": pct(ratios, 75),
    }


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        target(
            f"{client}: TokenAuth / static header per request",
            res[client]["ratio_median"],
            f"< {RATIO_MAX:g}",
            res[client]["ratio_median"] < RATIO_MAX,
        )
        for client in CLIENTS
        if "ratio_median" in res.get(client, {})
    ]


def report(res: dict[str, Any]) -> list[str]:
    out = ["Per request, local keep-alive HTTP server (median of rounds)"]
    for client, h in res.items():
        if "skipped" in h:
            out.append(f"  {client}: skipped ({h['skipped']})")
            continue
        mu = h["median_us"]
        out.append(
            f"  {client:<9} TokenAuth {mu['token_auth']:.0f} µs, static header {mu['static_header']:.0f} µs, "
            f"ratio {h['ratio_median']:.3f} (IQR {h['ratio_p25']:.3f}..{h['ratio_p75']:.3f})"
        )
    return out


if __name__ == "__main__":
    standalone(run, targets)

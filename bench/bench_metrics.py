#!/usr/bin/env python3
"""Metrics (issue 14): what a scrape of sa-token's Prometheus collector costs, and that
``token()`` is unchanged with the collector registered.

* **Scrape**: ``SaTokenCollector.collect()``, consumed, with 1000 sources, each case in a fresh
  process: on 10 volumes (issue 9's scale case: 10 series) and on 1000 volumes (1000 series, the
  worst case). Reported with two references measured in the same process: the sources' own
  `status()` calls (the part of a scrape that is the core's) and prometheus_client's whole text
  exposition of the registry (what an HTTP scrape costs in all). Target: < 5 ms of CPU time per
  scrape (the thread's CPU time: on a loaded machine wall time also counts other processes).
* **token()**: interleaved rounds with the collector registered and unregistered, in random
  order; the ratio is the median of per-round ratios. Target: within 10% of 1.0 (nothing runs
  on the request path, so any difference is noise).
"""

from __future__ import annotations

import gc
import json
import random
import statistics
import subprocess
import sys
import time
import timeit
from pathlib import Path
from typing import Any

from _common import AUDIENCE, BENCH, Fixture, fmt_s, sizes, standalone, target

SIZES = {
    "full": {"cases": [(1000, 10), (1000, 1000)], "scrapes": 60, "rounds": 31, "round_s": 0.04},
    "quick": {"cases": [(1000, 10), (1000, 1000)], "scrapes": 20, "rounds": 11, "round_s": 0.01},
    "smoke": {"cases": [(100, 10)], "scrapes": 3, "rounds": 3, "round_s": 0.002},
}
SCRAPE_MAX_S = 0.005  # issue 14: a scrape of 1000 sources costs < 5 ms
RATIO_TOLERANCE = 0.10  # token() with the collector registered: within 10% of without
WARMUP_ROUNDS = 2
CASE_TIMEOUT = 300  # a fresh interpreter creating 1000 volumes and sources: generous, never hit


def run(*, quick: bool) -> dict[str, Any]:
    sz = sizes(SIZES, quick)
    cases = []
    for n, v in sz["cases"]:
        out = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(n), str(v), str(sz["scrapes"])],
            check=True,
            capture_output=True,
            text=True,
            timeout=CASE_TIMEOUT,
            cwd=BENCH,
        )
        cases.append(json.loads(out.stdout))
    return {"cases": cases, "token": _token_ratio(sz)}


def _worker(n_sources: int, n_volumes: int, scrapes: int) -> dict[str, Any]:
    """One case, in this (fresh) process: per-scrape times of the collector and its references."""
    from prometheus_client import CollectorRegistry, generate_latest

    from sa_token import TokenSource
    from sa_token._live import live_sources
    from sa_token.metrics import register
    from sa_token.testing import ProjectedVolume

    with Fixture() as fx:
        paths = []
        for i in range(n_volumes):
            vol = ProjectedVolume(fx.root / f"v{i}")
            vol.write({"token": fx.pool[i % len(fx.pool)]})
            paths.append(str(vol.token_path))
        sources = [TokenSource(paths[i % n_volumes], audience=AUDIENCE) for i in range(n_sources)]
        registry = CollectorRegistry()
        collector = register(registry)
        series = sum(len(m.samples) for m in collector.collect() if m.name == "sa_token_stale")

        def timed(fn: Any) -> dict[str, dict[str, float]]:
            """Wall and CPU time of this thread per call. A scrape neither sleeps nor does I/O:
            the two differ by what other processes took from it, so the target is on CPU time."""
            fn()  # warm-up
            wall, cpu = [], []
            for _ in range(scrapes):
                gc.collect()
                t0, c0 = time.perf_counter(), time.thread_time()
                fn()
                cpu.append(time.thread_time() - c0)
                wall.append(time.perf_counter() - t0)
            return {"wall_s": _stats(wall), "cpu_s": _stats(cpu)}

        result = {
            "sources": n_sources,
            "volumes": n_volumes,
            "series": series,
            "scrape": timed(lambda: list(collector.collect())),
            "status_only": timed(lambda: [s.status() for s in live_sources()]),
            "exposition": timed(lambda: generate_latest(registry)),
        }
        for s in sources:
            s.close()
    return result


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "n": len(values)}


def _token_ratio(sz: dict[str, Any]) -> dict[str, Any]:
    """token() per call with the collector registered / unregistered (interleaved rounds)."""
    from prometheus_client import CollectorRegistry

    from sa_token import TokenSource
    from sa_token.metrics import register
    from sa_token.testing import ProjectedVolume

    with Fixture() as fx:
        vol = ProjectedVolume(fx.root / "hot")
        vol.write({"token": fx.pool[0]})
        registry = CollectorRegistry()
        collector = register(registry)
        registered = True
        with TokenSource(vol.token_path, audience=AUDIENCE) as src:
            timer = timeit.Timer("f()", globals={"f": src.token})
            number = max(1, int(sz["round_s"] / max(min(timer.repeat(3, 1000)) / 1000, 1e-9)))
            per_round: dict[str, list[float]] = {"registered": [], "unregistered": []}
            for r in range(sz["rounds"] + WARMUP_ROUNDS):
                order = list(per_round)
                random.shuffle(order)
                for mode in order:
                    if mode == "registered" and not registered:
                        register(registry)  # the same collector, registered again
                        list(collector.collect())  # and scraped
                    elif mode == "unregistered" and registered:
                        registry.unregister(collector)
                    registered = mode == "registered"
                    ns = timer.timeit(number) / number * 1e9
                    if r >= WARMUP_ROUNDS:
                        per_round[mode].append(ns)
    ratios = [a / b for a, b in zip(per_round["registered"], per_round["unregistered"])]
    return {
        "rounds": sz["rounds"],
        "calls_per_round": number,
        "median_ns": {mode: statistics.median(v) for mode, v in per_round.items()},
        "registered_over_unregistered": statistics.median(ratios),
    }


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for case in res["cases"]:
        scrape = case["scrape"]["cpu_s"]["median"]
        rows.append(
            target(
                f"metrics scrape of {case['sources']} sources on {case['volumes']} volumes (CPU ms, median)",
                round(scrape * 1e3, 3),
                f"< {SCRAPE_MAX_S * 1e3:g} ms",
                scrape < SCRAPE_MAX_S if case["sources"] >= 1000 else None,
            )
        )
    ratio = res["token"]["registered_over_unregistered"]
    rows.append(
        target(
            "token() with metrics registered / without",
            round(ratio, 3),
            f"1.0 +- {RATIO_TOLERANCE:g}",
            abs(ratio - 1) <= RATIO_TOLERANCE,
        )
    )
    return rows


def report(res: dict[str, Any]) -> list[str]:
    out = [
        "Metrics: one Prometheus scrape, CPU time (wall) per scrape, median; a fresh process per case",
        f"  {'case':<32}{'series':>7}{'collector':>20}{'status() alone':>20}{'text exposition':>20}",
    ]

    def both(t: dict[str, Any]) -> str:
        return f"{fmt_s(t['cpu_s']['median'])} ({fmt_s(t['wall_s']['median'])})"

    for c in res["cases"]:
        case = f"  {c['sources']} sources on {c['volumes']} volumes".ljust(34) + f"{c['series']:>7}"
        out.append(case + "".join(f"{both(c[k]):>20}" for k in ("scrape", "status_only", "exposition")))
    tok = res["token"]
    ns = tok["median_ns"]
    out.append(
        f"  token() with the collector registered: {ns['registered']:.0f} ns, without: "
        f"{ns['unregistered']:.0f} ns (median of per-round ratios {tok['registered_over_unregistered']:.3f})"
    )
    return out


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        print(json.dumps(_worker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
    else:
        standalone(run, targets)

#!/usr/bin/env python3
"""Import cost: ``import sa_token`` against ``import jwt`` alone, in fresh interpreters
(``-X importtime`` cumulative time, and the wall time of ``python -c``); what a first
`TokenSource` adds (``from sa_token import TokenSource``: the names are imported at first use);
and the CPU of the exec probe ``sa-token check FILE`` against ``python -c pass`` (process CPU
time, user + system, of the child).

Targets (issue 20): ``import sa_token`` under 20 ms; ``sa-token check`` at most 2x the CPU of
``python -c pass``.
"""

from __future__ import annotations

import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import sizes, standalone, target

SIZES = {
    "full": {"runs": 21, "warmup": 1},
    "quick": {"runs": 5, "warmup": 1},
    "smoke": {"runs": 1, "warmup": 0},
}


IMPORT_MAX = 20e-3  # import sa_token under 20 ms
CHECK_RATIO_MAX = 2.0  # sa-token check at most 2x the CPU of python -c pass
# The children read and write bytecode, as an installed package does (pip compiles it at
# install): with PYTHONDONTWRITEBYTECODE set (some machines and images set it) every run would
# compile sa_token's modules from source, and the probe measured 3x instead of 2x.
_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _importtime(module: str, code: str = "") -> float:
    """Cumulative import time (seconds) from ``-X importtime`` of ``code`` (default ``import
    module``): the outermost imports from ``module``'s first line on, summed (the names of
    ``sa_token`` are imported at first use, after ``sa_token`` itself)."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code or f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
        env=_ENV,
    ).stderr
    total, seen = 0, False
    for line in err.splitlines():
        m = re.match(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|\s(\s*)(\S+)$", line)
        if m and (seen or m.group(4) == module) and not m.group(3):
            seen = True
            total += int(m.group(2))
    if not seen:
        raise RuntimeError(f"no importtime line for {module}")
    return total / 1e6


def _wall(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=_ENV)
    return time.perf_counter() - t0


def _cpu(cmd: list[str]) -> float:
    """User + system CPU seconds of one run of ``cmd`` (a child process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=_ENV)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _probe(runs: int) -> dict[str, float]:
    """``sa-token check`` (the console script next to this Python, else ``-m sa_token``) on a
    fresh token, against ``python -c pass``: median CPU seconds of each, in alternation."""
    from sa_token.testing import ProjectedVolume, TokenIssuer

    with tempfile.TemporaryDirectory(prefix="sa-token-bench-import-") as tmp:
        vol = ProjectedVolume(Path(tmp) / "vol")
        vol.rotate(TokenIssuer().issue(audiences=["bench"]))
        script = Path(sys.executable).with_name("sa-token")
        check = [str(script)] if script.exists() else [sys.executable, "-m", "sa_token"]
        check += ["check", str(vol.token_path)]
        cpu: dict[str, list[float]] = {"check": [], "pass": []}
        _cpu(check)  # warm-up: writes the bytecode the runs below read
        for _ in range(max(3, runs)):
            cpu["check"].append(_cpu(check))
            cpu["pass"].append(_cpu([sys.executable, "-c", "pass"]))
    return {k: statistics.median(v) for k, v in cpu.items()}


def run(*, quick: bool) -> dict[str, Any]:
    sz = sizes(SIZES, quick)
    first_source = "from sa_token import TokenSource"
    source = [_importtime("sa_token", first_source) for _ in range(max(1, sz["runs"]))]
    probe = _probe(sz["runs"] * 8)  # a 20 ms process: CPU times are coarse, take many
    cum: dict[str, list[float]] = {"sa_token": [], "jwt": []}
    walls: dict[str, list[float]] = {"sa_token": [], "jwt": [], "nothing": []}
    for r in range(sz["runs"] + sz["warmup"]):  # warm-up: page cache, .pyc files
        for mod in ("sa_token", "jwt"):
            c, w = _importtime(mod), _wall(f"import {mod}")
            if r >= sz["warmup"]:
                cum[mod].append(c)
                walls[mod].append(w)
        w = _wall("pass")
        if r >= sz["warmup"]:
            walls["nothing"].append(w)
    med_cum = {k: statistics.median(v) for k, v in cum.items()}
    med_wall = {k: statistics.median(v) for k, v in walls.items()}
    return {
        "runs": sz["runs"],
        "importtime_cumulative_ms": {k: v * 1e3 for k, v in med_cum.items()},
        "wall_ms": {k: v * 1e3 for k, v in med_wall.items()},
        "sa_token_over_jwt_importtime": med_cum["sa_token"] / med_cum["jwt"],
        "token_source_importtime_ms": statistics.median(source) * 1e3,
        "check_cpu_ms": probe["check"] * 1e3,
        "pass_cpu_ms": probe["pass"] * 1e3,
        "check_over_pass_cpu": probe["check"] / max(probe["pass"], 1e-9),
        "sa_token_over_jwt_wall_net": (med_wall["sa_token"] - med_wall["nothing"])
        / max(med_wall["jwt"] - med_wall["nothing"], 1e-6),
    }


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    ms = res["importtime_cumulative_ms"]["sa_token"]
    return [
        target("import sa_token (importtime)", ms / 1e3, "< 20 ms", ms / 1e3 < IMPORT_MAX),
        target(
            "sa-token check CPU / python -c pass",
            res["check_over_pass_cpu"],
            "<= 2x",
            res["check_over_pass_cpu"] <= CHECK_RATIO_MAX,
        ),
        target(
            "import sa_token / import jwt (importtime)",
            res["sa_token_over_jwt_importtime"],
            "(no target)",
            None,
        )
    ]


def report(res: dict[str, Any]) -> list[str]:
    ms, wall = res["importtime_cumulative_ms"], res["wall_ms"]
    return [
        "Import (fresh interpreters, medians)",
        f"  -X importtime: sa_token {ms['sa_token']:.1f} ms, jwt {ms['jwt']:.1f} ms, "
        f"ratio {res['sa_token_over_jwt_importtime']:.2f}",
        f"  python -c wall: sa_token {wall['sa_token']:.0f} ms, jwt {wall['jwt']:.0f} ms, "
        f"nothing {wall['nothing']:.0f} ms",
        f"  from sa_token import TokenSource: {res['token_source_importtime_ms']:.1f} ms (importtime)",
        f"  sa-token check: {res['check_cpu_ms']:.1f} ms CPU, python -c pass {res['pass_cpu_ms']:.1f} ms: "
        f"{res['check_over_pass_cpu']:.2f}x",
    ]


if __name__ == "__main__":
    standalone(run, targets)

#!/usr/bin/env python3
"""Import cost: ``import sa_token`` against ``import jwt`` alone, in fresh interpreters
(``-X importtime`` cumulative time, and the wall time of ``python -c``). Reported, no target.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from typing import Any

from _common import sizes, standalone, target

SIZES = {
    "full": {"runs": 21, "warmup": 1},
    "quick": {"runs": 5, "warmup": 1},
    "smoke": {"runs": 1, "warmup": 0},
}


def _importtime(module: str) -> float:
    """Cumulative import time of ``module`` (seconds) from ``-X importtime``."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    for line in err.splitlines():
        m = re.match(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|\s(\s*)(\S+)$", line)
        if m and m.group(4) == module and not m.group(3):
            return int(m.group(2)) / 1e6
    raise RuntimeError(f"no importtime line for {module}")


def _wall(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t0


def run(*, quick: bool) -> dict[str, Any]:
    sz = sizes(SIZES, quick)
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
        "sa_token_over_jwt_wall_net": (med_wall["sa_token"] - med_wall["nothing"])
        / max(med_wall["jwt"] - med_wall["nothing"], 1e-6),
    }


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [
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
    ]


if __name__ == "__main__":
    standalone(run, targets)

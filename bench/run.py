#!/usr/bin/env python3
"""sa-token benchmarks: runs the benchmark modules, collects their results and targets, prints
one table and writes one JSON file.

    python bench/run.py [--quick] [--json PATH] [--only hot_path,rotation]

Each module in `MODULES` is a ``bench/bench_<name>.py`` that follows the convention in
``bench/_common.py`` (``run(*, quick)``, ``targets(result)``, optionally ``report(result)``).
Timings are ratios measured side by side in the same run; a missed target is reported, never
a failure: the exit status is 0 unless a benchmark itself crashed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

from _common import SMOKE_ENV, cpu_times, log, machine, machine_load, our_cpu

# The benchmarks, in the order they run and are reported. A new one: add its module here.
MODULES = [
    "bench_hot_path",
    "bench_rotation",
    "bench_busy",
    "bench_http",
    "bench_scale",
    "bench_fanout",
    "bench_import",
    "bench_metrics",
    "bench_overhead",
    "bench_vault",
    "bench_verify",
]
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"


def section(module: str) -> str:
    """A module's key in the results: ``bench_hot_path`` -> ``hot_path``."""
    return module[len("bench_") :] if module.startswith("bench_") else module


def run_one(module_name: str, quick: bool) -> dict[str, Any]:
    """Import and run one module: ``{"result", "targets", "report"}``, or ``{"skipped"}`` when
    an optional package it needs is missing, or ``{"error"}`` when it crashed."""
    try:
        module = importlib.import_module(module_name)
        result = module.run(quick=quick)
        rows = module.targets(result)
        report = getattr(module, "report", None)
        lines = report(result) if report is not None else []
    except ImportError as exc:
        return {"skipped": f"{type(exc).__name__}: {exc}"}
    except Exception:  # a crash is reported and makes the exit status 1; the others still run
        return {"error": traceback.format_exc()}
    return {"result": result, "targets": rows, "report": lines}


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    out = [
        f"sa-token benchmarks ({res['mode']}) on {m['cpu']}, {m['cores']} cores, "
        f"Python {m['python']}, Linux {m['kernel']}"
    ]
    load = {k: v for k, v in m.get("load_during", {}).items() if v}
    if load:
        parts = [
            f"{k} {v['others_fraction'] * 100:.0f}%/{v['steal_fraction'] * 100:.0f}%" for k, v in load.items()
        ]
        out.append("CPU used by other processes/stolen by the host during: " + ", ".join(parts))
    for i, lines in enumerate(res["reports"].values(), 1):
        if lines:
            out.append(f"\n{i}. {lines[0]}")
            out.extend(lines[1:])
    for key, why in res["skipped"].items():
        out.append(f"\n{key}: skipped ({why})")
    for key, trace in res["errors"].items():
        out.append(f"\n{key}: CRASHED\n{trace}")
    out.append("\nTargets")
    for t in res["targets"]:
        v = t["value"]
        val = f"{v:.4g}" if isinstance(v, float) else str(v)
        verdict = "n/a" if t["ok"] is None else ("PASS" if t["ok"] else "MISS")
        out.append(f"  {verdict:<5} {t['name']:<62} {val:>10}  (goal {t['target']})")
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="CI sizes (well under two minutes)")
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tiny sizes for the test suite
    ap.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"where to write the results ({DEFAULT_JSON})"
    )
    ap.add_argument(
        "--only",
        default=",".join(section(m) for m in MODULES),
        help="comma-separated benchmarks to run (default: all)",
    )
    args = ap.parse_args(argv)
    if args.smoke:
        os.environ[SMOKE_ENV] = "1"
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    only = set(args.only.split(","))
    unknown = only - {section(m) for m in MODULES}
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    started = time.perf_counter()
    res: dict[str, Any] = {
        "mode": mode,
        "command": " ".join(["python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(),
        "section_seconds": {},
        "targets": [],
        "reports": {},
        "skipped": {},
        "errors": {},
    }
    res["machine"]["load_during"] = {}
    for name in MODULES:
        key = section(name)
        if key not in only:
            continue
        log(f"{key}...")
        t0, c0, ours0 = time.perf_counter(), cpu_times(), our_cpu()
        got = run_one(name, quick=args.quick or args.smoke)
        res["section_seconds"][key] = time.perf_counter() - t0
        res["machine"]["load_during"][key] = machine_load(c0, cpu_times(), our_cpu() - ours0)
        if "skipped" in got:
            res["skipped"][key] = got["skipped"]
        elif "error" in got:
            res["errors"][key] = got["error"]
            log(got["error"])
        else:
            res[key] = got["result"]
            res["reports"][key] = got["report"]
            res["targets"] += [{"section": key, **row} for row in got["targets"]]
    res["machine"]["loadavg_at_end"] = os.getloadavg()
    res["elapsed_s"] = time.perf_counter() - started
    print(render(res))
    print(f"\n({res['elapsed_s']:.1f} s)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2, default=str) + "\n")
    log(f"wrote {args.json}")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

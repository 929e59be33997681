"""What the benchmark modules share: sizes by mode, statistics, the machine's description and
load, a fixture of tokens and volumes, a thread's scheduler counters, and the standalone entry.

Every benchmark module is ``bench/bench_<name>.py`` with

* ``run(*, quick: bool) -> dict[str, Any]``: raw measurements; ratios against a baseline run
  in the same process, never absolute targets;
* ``targets(result) -> list[dict[str, Any]]``: ``{"name", "value", "target", "ok"}`` each
  (``ok`` is ``None`` where there is no target);
* optionally ``report(result) -> list[str]``: lines for the human-readable table;

and runs alone as ``python bench/bench_<name>.py [--quick]``, printing its JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from pathlib import Path
from typing import Any, Callable, Optional

BENCH = Path(__file__).resolve().parent
AUDIENCE = "bench"
DATA_DIR = "..data"
# ``run.py --smoke`` sets this for the test suite: tiny sizes, numbers that mean nothing.
SMOKE_ENV = "SA_TOKEN_BENCH_SMOKE"


def mode(quick: bool) -> str:
    """``"smoke"`` (the test suite), ``"quick"`` (CI, well under a minute) or ``"full"``."""
    if os.environ.get(SMOKE_ENV):
        return "smoke"
    return "quick" if quick else "full"


def sizes(table: dict[str, dict[str, Any]], quick: bool) -> dict[str, Any]:
    """A module's sizes for this mode (``table`` has ``"full"``, ``"quick"`` and ``"smoke"``)."""
    return table[mode(quick)]


def target(name: str, value: Any, goal: str, ok: Optional[bool]) -> dict[str, Any]:
    """One row of a module's ``targets()``."""
    return {"name": name, "value": value, "target": goal, "ok": ok}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation."""
    s = sorted(values)
    if not s:
        return math.nan
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p90": pct(values, 90),
        "p99": pct(values, 99),
        "max": max(values) if values else math.nan,
        "min": min(values) if values else math.nan,
    }


def fmt_s(s: Optional[float]) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    if s >= 1e-6:
        return f"{s * 1e6:.3g} µs"
    return f"{s * 1e9:.3g} ns"


# ------------------------------------------------------------------------------ the machine --
def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    clock_ns = min(timeit.repeat("f()", "import time; f = time.perf_counter", number=100_000, repeat=5)) * 1e4
    sleep0_us = min(timeit.repeat("f(0)", "import time; f = time.sleep", number=200, repeat=3)) / 200 * 1e6
    virt = ""
    try:
        out = subprocess.run(["lscpu"], check=False, capture_output=True, text=True, timeout=5).stdout
        m = re.search(r"Hypervisor vendor:\s*(\S+)", out)
        virt = m.group(1) if m else ""
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "hypervisor": virt,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "perf_counter": str(time.get_clock_info("perf_counter").implementation),
        "perf_counter_call_ns": clock_ns,
        "sleep0_us": sleep0_us,
        "switchinterval_s": sys.getswitchinterval(),
        "loadavg_at_start": os.getloadavg(),
        # The kubernetes client re-resolves proxies from the environment on every API call.
        "environment_variables": len(os.environ),
    }


def cpu_times() -> Optional[list[int]]:
    """The machine's aggregate CPU counters from /proc/stat (user nice system idle iowait irq
    softirq steal ...), in clock ticks; None where unavailable."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def our_cpu() -> float:
    """CPU seconds used by this process and its reaped children (kubelet, server, workers)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def machine_load(before: Optional[list[int]], after: Optional[list[int]], ours_s: float) -> dict[str, float]:
    """How busy the machine's CPUs were between two ``cpu_times()``: in total, by other
    processes than this benchmark (``ours_s``: CPU seconds we used meanwhile), and the share
    the hypervisor stole from this VM."""
    if before is None or after is None:
        return {}
    d = [b - a for a, b in zip(before, after)]
    total = sum(d[:8]) or 1
    busy = total - d[3] - d[4]
    ours_ticks = ours_s * os.sysconf("SC_CLK_TCK")
    return {
        "busy_fraction": busy / total,
        "others_fraction": max(0.0, busy - ours_ticks) / total,
        "steal_fraction": d[7] / total if len(d) > 7 else 0.0,
    }


# --------------------------------------------------------------------------- this process --
def schedstat(tid: Optional[int]) -> Optional[tuple[float, float]]:
    """``(on-CPU seconds, run-queue wait seconds)`` of thread ``tid`` of this process
    (``/proc/self/task/<tid>/schedstat``), nanosecond precision; None where unavailable."""
    if tid is None:
        return None
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            fields = f.read().split()
        return int(fields[0]) / 1e9, int(fields[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def context_switches() -> dict[int, int]:
    """Voluntary plus involuntary context switches of every thread of this process, by thread
    id (``/proc/self/task/*/status``): each is a wake-up or a preemption of that thread."""
    out: dict[int, int] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        n = 0
        try:
            with open(f"/proc/self/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        n += int(line.split()[1])
        except (OSError, ValueError, IndexError):  # the thread ended meanwhile
            continue
        out[int(tid)] = n
    return out


def library_threads() -> list[threading.Thread]:
    """sa-token's own threads in this process (by their ``sa-token-`` names), found without
    reaching into the library; not the test kit's kubelet threads."""
    return [t for t in threading.enumerate() if t.name.startswith("sa-token") and "kubelet" not in t.name]


def threads_schedstat(threads: list[threading.Thread]) -> Optional[tuple[float, float]]:
    """`schedstat` summed over ``threads``; None where any is unavailable."""
    cpu = wait = 0.0
    for t in threads:
        st = schedstat(t.native_id)
        if st is None:
            return None
        cpu, wait = cpu + st[0], wait + st[1]
    return cpu, wait


# ---------------------------------------------------------------------------------- fixture --
TMPFS = "/dev/shm"


class Fixture:
    """An issuer, a pool of tokens and a temporary directory for projected volumes."""

    def __init__(self, prefix: str = "sa-token-bench-") -> None:
        from sa_token.testing import TokenIssuer

        self.issuer = TokenIssuer()
        # On tmpfs when the machine has one, as every real projected volume is (the kubelet's
        # emptyDir{medium: Memory}): the watcher reads such files without giving up the GIL.
        self.root = Path(tempfile.mkdtemp(prefix=prefix, dir=TMPFS if os.path.isdir(TMPFS) else None))
        # Consecutive rotations only need different tokens: cycle through a small pool.
        self.pool = [self.issuer.issue(audiences=[AUDIENCE], expiration_seconds=3600) for _ in range(16)]

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Fixture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def standalone(
    run: Callable[..., dict[str, Any]], targets: Callable[[dict[str, Any]], list[dict[str, Any]]]
) -> None:
    """``python bench/bench_<name>.py [--quick]``: run the module, print its result and targets
    as one JSON object."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="CI sizes")
    args = ap.parse_args()
    result = run(quick=args.quick)
    print(json.dumps({"result": result, "targets": targets(result)}, indent=2, default=str))

"""The benchmarks run end to end and report every section with finite numbers.

Runs ``bench/run.py`` in a subprocess with tiny sizes (its hidden ``--smoke`` mode: the same
code as ``--quick``, fewer rounds) and checks the JSON's shape and values, never timing
targets: speed is judged by the benchmark's PASS/MISS table, not by the test suite. Also runs
one benchmark module alone, as the convention in ``bench/_common.py`` promises.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "bench" / "run.py"
SMOKE_TIMEOUT = 900
SECTIONS = ("hot_path", "rotation", "busy", "http", "scale", "fanout", "import")

pytestmark = [
    pytest.mark.slow,  # about 8 s: six benchmarks, each with its subprocesses
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the benchmarks measure inotify"),
]


def _numbers(obj: Any, where: str = "") -> list[tuple[str, float]]:
    """Every int/float leaf of a JSON value, with its path."""
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [(where, float(obj))]
    if isinstance(obj, dict):
        return [n for k, v in obj.items() for n in _numbers(v, f"{where}.{k}")]
    if isinstance(obj, list):
        return [n for i, v in enumerate(obj) for n in _numbers(v, f"{where}[{i}]")]
    return []


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    # Its own process group: on a timeout every process it started (benchmark servers, kubelet
    # processes) is killed with it. The bound is generous: alone it takes ~13 s, but a loaded
    # 2-core machine (another suite running beside it, Python 3.9's GIL hand-offs) stretched it
    # past 180 s; the test is about the shape of the results, never about speed.
    proc = subprocess.Popen(
        [sys.executable, str(RUN), "--smoke", "--json", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=SMOKE_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"bench/run.py --smoke ran past {SMOKE_TIMEOUT} s; its log:\n{stderr[-3000:]}")
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    proc_stdout = stdout
    assert "Targets" in proc_stdout  # the table was printed
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def test_every_section_is_present(result: dict[str, Any]) -> None:
    assert result["mode"] == "smoke"
    assert result["errors"] == {}
    for section in ("machine", "targets", *SECTIONS):
        assert section in result, section
    # (modules added later to run.py's MODULES may be skipped where their package is missing)
    assert set(result["section_seconds"]) >= set(SECTIONS)
    assert not set(result["skipped"]) & set(SECTIONS)


def test_every_number_is_finite(result: dict[str, Any]) -> None:
    numbers = _numbers(result)
    assert len(numbers) > 100
    bad = [(path, value) for path, value in numbers if not math.isfinite(value)]
    assert not bad, bad


def test_hot_path_reports_every_candidate(result: dict[str, Any]) -> None:
    hot = result["hot_path"]
    expected = {
        "sa_token",
        "sa_token_checked",
        "read_file",
        "k8s_auth_settings",
        "k8s_get_api_key",
        "constant",
        "clock",
        "clock_bound",
    }
    assert set(hot["median_ns"]) == expected
    assert all(v > 0 for v in hot["median_ns"].values())
    for key in (
        "read_file_over_sa_token",
        "k8s_auth_settings_over_sa_token",
        "sa_token_over_constant",
        "clock_over_constant",
    ):
        assert hot[key] > 0


def test_every_rotation_was_seen(result: dict[str, Any]) -> None:
    rot = result["rotation"]
    expected_n = {"inotify_callback": 5, "inotify_poll": 5, "inotify_spin": 3, "inotify_spin_short_switch": 3}
    for mode, n in {**expected_n, "timer_fallback": 2}.items():
        assert rot[mode]["missed"] == 0, mode
        pickup = rot[mode]["pickup_s"]
        assert pickup["n"] == n
        assert 0 < pickup["p50"] <= pickup["max"] < 5
        assert 0 <= rot[mode]["rename_s"]["p50"] < 1  # the kubelet process's stamps of its swap
    callback = rot["inotify_callback"]
    assert callback["library_threads"], "the library's threads were found by name"
    assert callback["library_cpu_s"]["p50"] > 0  # they did the work of each rotation
    # the timer fallback really is the timer: no pickup beyond one interval plus a wake-up
    assert rot["timer_fallback"]["pickup_s"]["max"] < rot["timer_fallback"]["refresh_interval_s"] + 1
    assert {d["worst_case_s"] for d in rot["documented_worst_case"]} >= {60.0, 600.0, 300.0}


def test_busy_application_pickup(result: dict[str, Any]) -> None:
    busy = result["busy"]
    assert busy["busy_threads"] == 4 and busy["poll_every_s"] == 0.001
    assert busy["missed"] == 0 and busy["pickup_s"]["n"] == 3
    assert busy["switchinterval_s"] == 0.005  # the default: nothing lowered it


def test_http_clients_measured(result: dict[str, Any]) -> None:
    for client in ("requests", "httpx"):
        h = result["http"][client]
        assert "skipped" not in h, h
        assert h["median_us"]["token_auth"] > 0
        assert h["median_us"]["static_header"] > 0
        assert h["ratio_median"] > 0


def test_scale_counts_instances_threads_memory_and_wakeups(result: dict[str, Any]) -> None:
    cases = result["scale"]["cases"]
    assert [(c["sources"], c["volumes"]) for c in cases] == [(1, 1), (20, 10), (100, 10)]
    for case in cases:
        assert case["inotify_instances_before"] == 0
        assert case["inotify_instances"] == 1
        assert 1 <= case["threads_delta"] <= 2, case["new_threads"]
        assert case["mem_per_source_bytes"] > 0
        assert case["idle_wakeups_per_s"] >= 0 and set(case["idle_wakeups"]) <= set(case["new_threads"])
        assert case["fanout_s"] is not None  # every source on the rotated volume saw the new token


def test_fanout_shares_one_read_among_many_sources(result: dict[str, Any]) -> None:
    fan = result["fanout"]
    assert fan["one"]["sources"] == 1 and fan["many"]["sources"] == 200
    for case in (fan["one"], fan["many"]):
        assert case["watcher_s"]["n"] == case["pickup_s"]["n"] == 3
        assert case["watcher_s"]["p50"] > 0 and 0 < case["pickup_s"]["p50"] < 5
    assert fan["join_s"] > 0 and fan["fresh_s"] > 0


def test_targets_table(result: dict[str, Any]) -> None:
    rows = result["targets"]
    assert len(rows) >= 15
    for row in rows:
        assert set(row) == {"section", "name", "value", "target", "ok"}
        assert row["ok"] in (True, False, None)
    names = " ".join(r["name"] for r in rows)
    for needle in (
        "constant-returning",
        "reading the file",
        "pickup p99",
        "busy app",
        "wake-ups",
        "threads added",
    ):
        assert needle in names


def test_a_benchmark_module_runs_alone(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_import.py"), "--quick"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # from anywhere
        env={**os.environ, "SA_TOKEN_BENCH_SMOKE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["result"]["runs"] == 1 and out["targets"][-1]["ok"] is None  # the ratio to jwt: no target
    assert out["result"]["check_cpu_ms"] > 0 and out["result"]["token_source_importtime_ms"] > 0

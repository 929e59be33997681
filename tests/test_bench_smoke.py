"""The benchmark runs end to end and reports every section with finite numbers.

Runs ``bench/run.py`` in a subprocess with tiny sizes (its hidden ``--smoke`` mode: the same
code as ``--quick``, fewer rounds) and checks the JSON's shape and values, never timing
targets: speed is judged by the benchmark's PASS/MISS table, not by the test suite.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "bench" / "run.py"

pytestmark = [
    pytest.mark.slow,  # about 7 s: five sections, each with its subprocesses
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the benchmark measures inotify"),
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
    proc = subprocess.run(
        [sys.executable, str(RUN), "--smoke", "--json", str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Targets" in proc.stdout  # the table was printed
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def test_every_section_is_present(result: dict[str, Any]) -> None:
    for section in ("machine", "hot_path", "rotation", "http", "scale", "import", "targets"):
        assert section in result, section
    assert result["mode"] == "smoke"


def test_every_number_is_finite(result: dict[str, Any]) -> None:
    numbers = _numbers({k: v for k, v in result.items() if k != "sizes"})
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
    }
    assert set(hot["median_ns"]) == expected
    assert all(v > 0 for v in hot["median_ns"].values())
    for key in ("read_file_over_sa_token", "k8s_auth_settings_over_sa_token", "sa_token_over_constant"):
        assert hot[key] > 0


def test_every_rotation_was_seen(result: dict[str, Any]) -> None:
    rot = result["rotation"]
    for mode in (
        "inotify_callback",
        "inotify_poll",
        "inotify_spin",
        "inotify_spin_short_switch",
        "timer_fallback",
    ):
        assert rot[mode]["missed"] == 0, mode
        pickup = rot[mode]["pickup_s"]
        size = "rot_spin_n" if "spin" in mode else "timer_n" if "timer" in mode else "rot_n"
        assert pickup["n"] == result["sizes"][size]
        assert 0 < pickup["p50"] <= pickup["max"] < 5
    # the bench's timing wrapper around the watcher's event handler still fits the core
    callback = rot["inotify_callback"]
    assert callback["rename_to_event_s"]["n"] == result["sizes"]["rot_n"]
    assert callback["handler_cpu_s"]["p50"] > 0
    # the timer fallback really is the timer: no pickup beyond one interval plus a wake-up
    assert rot["timer_fallback"]["pickup_s"]["max"] < rot["timer_fallback"]["refresh_interval_s"] + 1
    assert {d["worst_case_s"] for d in rot["documented_worst_case"]} >= {60.0, 600.0, 300.0}


def test_http_clients_measured(result: dict[str, Any]) -> None:
    for client in ("requests", "httpx"):
        h = result["http"][client]
        assert "skipped" not in h, h
        assert h["median_us"]["token_auth"] > 0
        assert h["median_us"]["static_header"] > 0
        assert h["ratio_median"] > 0


def test_scale_uses_one_inotify_instance_and_no_thread_per_source(result: dict[str, Any]) -> None:
    cases = result["scale"]["cases"]
    assert len(cases) >= 2
    for case in cases:
        assert case["inotify_instances_before"] == 0
        assert case["inotify_instances"] == 1
        assert case["threads_delta"] <= 2, case["new_threads"]
        assert case["mem_per_source_bytes"] > 0
        assert case["fanout_s"] is not None  # every source on the rotated volume saw the new token


def test_targets_table(result: dict[str, Any]) -> None:
    rows = result["targets"]
    assert len(rows) >= 10
    assert {r["result"] for r in rows} <= {"PASS", "MISS", "n/a"}

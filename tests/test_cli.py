"""The ``sa-token`` command line: inspect, watch, demo; exit codes; never the token in output."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import sa_token.testing
from sa_token import Token
from sa_token._hub import volume_root
from sa_token.cli import main
from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer, assert_no_token

AUD = "sa-token-test"
BIN = Path(sys.executable).parent


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# ----------------------------------------------------------------------- inspect ----------
def test_inspect_valid_projected_token_shows_claims_times_and_mount(
    kubelet: Kubelet, projected_volume: ProjectedVolume, capsys: pytest.CaptureFixture[str]
) -> None:
    token = kubelet.current
    assert token is not None
    rc, out, err = _run(capsys, "inspect", str(projected_volume.token_path), "--audience", AUD)
    assert rc == 0, err
    assert err == ""
    assert "status           valid" in out
    assert f"projected volume {projected_volume.directory}" in out
    assert "mode 0644" in out
    assert "rotation due" in out and "80% of the lifetime" in out
    assert "in 59m" in out or "in 60m" in out  # expiry, relative
    assert "pod              app-0" in out
    assert '"jti"' in out  # the decoded claims are printed
    assert "\033[" not in out  # captured stdout is not a terminal: no colour
    assert_no_token(out + err, [token])


def test_inspect_json_matches_the_token(
    kubelet: Kubelet, projected_volume: ProjectedVolume, capsys: pytest.CaptureFixture[str]
) -> None:
    token = kubelet.current
    assert token is not None
    rc, out, err = _run(capsys, "inspect", str(projected_volume.token_path), "--json")
    assert rc == 0
    report = json.loads(out)
    from sa_token._token import parse_token

    tok: Token = parse_token(token)
    assert report["valid"] is True and report["status"] == "valid"
    assert report["audiences"] == [AUD]
    assert report["namespace"] == "default"
    assert report["service_account"] == "default"
    assert report["pod"] == "app-0" and report["node"] == "node-1"
    assert report["claims"]["jti"] == tok.claims["jti"]
    assert report["header"] == {"alg": "RS256", "kid": kubelet.issuer.kid}
    assert tok.rotation_due_at is not None
    assert report["rotation_due_at"] == tok.rotation_due_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert report["lifetime_seconds"] == 3600
    assert 3500 < report["remaining_seconds"] <= 3600
    assert report["mount"]["kind"] == "projected"
    assert report["mount"]["volume_root"] == str(projected_volume.directory)
    assert report["mount"]["data_dir"] == projected_volume.data_dir.name
    assert report["file"]["mode"] == "0644"
    assert report["file"]["uid"] == os.stat(projected_volume.token_path).st_uid
    assert report["file"]["symlink"] is True
    assert_no_token(out + err, [token])


def test_inspect_reports_0600_for_a_run_as_user_volume(
    tmp_path: Path, token_issuer: TokenIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    vol = ProjectedVolume(tmp_path / "vol", fs_user=os.getuid())
    vol.write({"token": token_issuer.issue(audiences=[AUD])})
    rc, out, _ = _run(capsys, "inspect", str(vol.token_path), "--json")
    assert rc == 0
    assert json.loads(out)["file"]["mode"] == "0600"


def test_inspect_static_subpath_like_file_is_flagged(
    tmp_path: Path, token_issuer: TokenIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    # A subPath mount is a bind mount of the file itself: no ..data anywhere above it.
    token = token_issuer.issue(audiences=[AUD])
    static = tmp_path / "app" / "token"
    static.parent.mkdir()
    static.write_text(token)
    assert volume_root(str(static)) is None
    rc, out, err = _run(capsys, "inspect", str(static))
    assert rc == 0  # still a valid token today...
    assert "static file" in out and "NEVER rotate" in out  # ...but it will never be rotated
    rc, out, _ = _run(capsys, "inspect", str(static), "--json")
    report = json.loads(out)
    assert report["mount"]["kind"] == "static"
    assert any("subPath" in w for w in report["warnings"])
    assert_no_token(out + err, [token])


def test_volume_root_walks_up_parents(projected_volume: ProjectedVolume, kubelet: Kubelet) -> None:
    # A nested payload key (path: "sub/token") lives below the volume root.
    projected_volume.rotate(kubelet.mint(), **{"sub/token": kubelet.mint()})
    assert volume_root(str(projected_volume.path("sub/token"))) == str(projected_volume.directory)
    assert volume_root(str(projected_volume.token_path)) == str(projected_volume.directory)


def test_inspect_expired_token_exits_1(
    projected_volume: ProjectedVolume, kubelet: Kubelet, capsys: pytest.CaptureFixture[str]
) -> None:
    token = kubelet.rotate(now=time.time() - 7200, expiration_seconds=600)
    rc, out, err = _run(capsys, "inspect", str(projected_volume.token_path))
    assert rc == 1
    assert "INVALID: expired" in out  # the details are still shown
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "expired at" in lines[0] and "ago" in lines[0] and "rotated" in lines[0]
    assert_no_token(out + err, [token])


def test_inspect_not_yet_valid_token_exits_1(
    projected_volume: ProjectedVolume, kubelet: Kubelet, capsys: pytest.CaptureFixture[str]
) -> None:
    kubelet.rotate(now=time.time() + 3600)
    rc, _, err = _run(capsys, "inspect", str(projected_volume.token_path), "--json")
    assert rc == 1
    assert "not valid until" in err and "clock" in err


def test_inspect_wrong_audience_exits_1(
    projected_volume: ProjectedVolume, kubelet: Kubelet, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = _run(capsys, "inspect", str(projected_volume.token_path), "--audience", "vault", "--json")
    assert rc == 1
    assert json.loads(out)["status"] == "audience-mismatch"
    assert "not 'vault'" in err and "serviceAccountToken.audience" in err
    assert len(err.strip().splitlines()) == 1


def test_inspect_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys, "inspect", str(tmp_path / "nope"))
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1 and "does not exist" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"hello world", "not a JWT"),
        (b"a.b.c", "not a valid JWT"),
        (b"\xff\xfe.x.y", "non-ASCII"),
        (b"   \n", "empty"),
    ],
)
def test_inspect_garbage_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, needle: str
) -> None:
    f = tmp_path / "token"
    f.write_bytes(content)
    rc, out, err = _run(capsys, "inspect", str(f), "--json")
    assert rc == 2
    assert json.loads(out)["status"] == "file-error"
    assert needle in err and err.count("\n") == 1


def test_inspect_a_directory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "inspect", str(tmp_path))
    assert rc == 2 and "is a directory" in err


# ----------------------------------------------------------------------- watch ------------
def _json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_watch_prints_each_rotation_then_exits(
    projected_volume: ProjectedVolume, kubelet: Kubelet, capsys: pytest.CaptureFixture[str]
) -> None:
    written: list[str] = []
    kubelet.on_rotate = written.append
    kubelet.start(every=0.2)
    try:
        rc = main(
            ["watch", str(projected_volume.token_path), "--json", "--max-rotations", "3", "--timeout", "10"]
        )
    finally:
        kubelet.stop()
    out, err = capsys.readouterr()
    assert rc == 0, err
    events = _json_lines(out)
    assert (
        events[0]["event"] == "start" and events[0]["mode"] == "inotify" and events[0]["mount"] == "projected"
    )
    rotations = [e for e in events if e["event"] == "rotation"]
    assert [e["count"] for e in rotations] == [1, 2, 3]
    from sa_token._token import parse_token

    jtis = {parse_token(t).claims["jti"] for t in written}
    assert {e["jti"] for e in rotations} <= jtis  # each line is a token the kubelet wrote
    assert all(e["since_last_seconds"] >= 0 for e in rotations)
    assert events[-1] == {**events[-1], "event": "stop", "reason": "max-rotations", "rotations": 3}
    assert_no_token(out + err, [*written, kubelet.current or ""])


def test_watch_reports_a_failed_reread(
    projected_volume: ProjectedVolume, kubelet: Kubelet, capsys: pytest.CaptureFixture[str]
) -> None:
    def rotate() -> None:
        time.sleep(0.3)
        projected_volume.rotate("not-a-token")
        time.sleep(0.3)
        kubelet.rotate()

    t = threading.Thread(target=rotate)
    t.start()
    rc = main(["watch", str(projected_volume.token_path), "--max-rotations", "1", "--timeout", "10"])
    t.join()
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"watching {projected_volume.token_path} (inotify)")
    failed = [ln for ln in lines if ln.split()[1:2] == ["failed"]]
    assert failed and "not a JWT" in failed[0] and "keeping the current token" in failed[0]
    assert any(ln.split()[1:2] == ["rotated"] and "since last" in ln for ln in lines)
    assert lines[-1] == "stopped (max-rotations) after 1 rotation(s)"


def test_watch_timeout_without_enough_rotations_exits_1(
    projected_volume: ProjectedVolume, kubelet: Kubelet, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["watch", str(projected_volume.token_path), "--max-rotations", "1", "--timeout", "0.3"])
    _, err = capsys.readouterr()
    assert rc == 1 and "timed out after 0.3s with 0 of 1 rotations" in err


def test_watch_wrong_audience_and_missing_file(
    tmp_path: Path, projected_volume: ProjectedVolume, kubelet: Kubelet, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["watch", str(projected_volume.token_path), "--audience", "vault", "--timeout", "1"]) == 1
    assert main(["watch", str(tmp_path / "missing"), "--timeout", "1"]) == 2
    _, err = capsys.readouterr()
    assert "not 'vault'" in err and "does not exist" in err


def _console_script() -> str:
    exe = shutil.which("sa-token", path=str(BIN)) or shutil.which("sa-token")
    assert exe is not None, "the sa-token console script is not installed (pip install -e .)"
    return exe


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_watch_console_script_exits_0_on_signal(
    projected_volume: ProjectedVolume, kubelet: Kubelet, sig: signal.Signals
) -> None:
    proc = subprocess.Popen(
        [_console_script(), "watch", str(projected_volume.token_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("watching "), first
        kubelet.rotate()
        rotated = proc.stdout.readline()
        assert "rotated" in rotated
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped (signal) after 1 rotation(s)" in out
    assert "Traceback" not in err
    assert_no_token(first + rotated + out + err, [kubelet.current or ""])


def test_python_dash_m_and_version(kubelet: Kubelet, projected_volume: ProjectedVolume) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "sa_token", "inspect", str(projected_volume.token_path), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["valid"] is True
    res = subprocess.run([_console_script(), "--version"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and res.stdout.startswith("sa-token ")
    res = subprocess.run(
        [_console_script(), "inspect", "/nonexistent/token"], capture_output=True, text=True, check=False
    )
    assert res.returncode == 2 and res.stderr.startswith(
        "sa-token: token file /nonexistent/token does not exist"
    )


# ----------------------------------------------------------------------- demo -------------
def test_demo_rotates_calls_and_never_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    minted: list[str] = []

    class RecordingKubelet(Kubelet):
        def rotate(self, **overrides: Any) -> str:
            token = super().rotate(**overrides)
            minted.append(token)
            return token

    monkeypatch.setattr(sa_token.testing, "Kubelet", RecordingKubelet)
    # 6 s: one kubelet rotation (every 4 s) with calls on both sides of it.
    rc = main(["demo", "--duration", "6", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    events = _json_lines(out)
    summary = events[-1]
    assert summary["event"] == "summary" and summary["ok"] is True
    assert summary["calls"] > 5
    assert summary["rotations"] >= 1
    assert summary["reloads"] >= 1
    assert summary["failures"] == 0
    calls = [e for e in events if e["event"] == "call"]
    assert len(calls) == summary["calls"] and all(c["status"] == 200 for c in calls)
    assert len({c["jti"] for c in calls}) >= 2  # the server saw the rotated token
    assert len(minted) >= 2
    assert_no_token(out + err, minted)


def test_demo_human_output_and_missing_dependency(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "requests", None)  # as if requests were not installed
    rc = main(["demo", "--duration", "1"])
    _, err = capsys.readouterr()
    assert rc == 2
    assert "pip install 'sa-token[demo]'" in err and "requests" in err


# ----------------------------------------------------------------------- hostile input ----
# Terminal control in claims: clear the screen, home the cursor, set the window title (OSC),
# fake a "status valid" line, and a C1 CSI (0x9b) that some terminals act on without ESC.
EVIL = "\x1b[2J\x1b[H\x1b]0;owned\x07\nstatus           valid\x9b31m\r"
CONTROL = ("\x1b", "\x07", "\x9b", "\r")


def _evil_token(issuer: TokenIssuer) -> str:
    claims = issuer.claims(audiences=[AUD, "aud" + EVIL], namespace="ns" + EVIL, pod="pod" + EVIL)
    claims["sub"] = "system:serviceaccount:" + EVIL
    claims["iss"] = "https://issuer" + EVIL
    return issuer.sign(claims)


def _assert_no_control(text: str) -> None:
    lines = text.split("\n")  # a line feed of our own is fine; any other control character is not
    for ch in CONTROL:
        assert not any(ch in line for line in lines), f"raw {ch!r} in the output"


def test_inspect_escapes_control_characters_in_claims(
    projected_volume: ProjectedVolume, token_issuer: TokenIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    token = _evil_token(token_issuer)
    projected_volume.write({"token": token})
    rc, out, err = _run(capsys, "inspect", str(projected_volume.token_path), "--audience", "vault")
    assert rc == 1
    _assert_no_control(out + err)
    # what was escaped is still shown, as text
    assert "system:serviceaccount:\\x1b[2J\\x1b[H\\x1b]0;owned\\x07\\x0astatus" in out
    # the only line that starts with "status" is ours
    assert [ln for ln in out.splitlines() if ln.startswith("status")] == [
        "status           INVALID: audience-mismatch"
    ]
    assert "\\x1b" in err and len(err.strip().splitlines()) == 1
    assert_no_token(out + err, [token])


def test_inspect_json_keeps_claims_exact_and_escaped_by_json(
    projected_volume: ProjectedVolume, token_issuer: TokenIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    token = _evil_token(token_issuer)
    projected_volume.write({"token": token})
    rc, out, err = _run(capsys, "inspect", str(projected_volume.token_path), "--json", "--audience", "vault")
    assert rc == 1
    for ch in CONTROL:
        assert ch not in out and ch not in err
    report = json.loads(out)  # valid JSON: json escaped the control characters itself
    assert report["subject"] == "system:serviceaccount:" + EVIL  # the exact claim, not our escaping
    assert report["claims"]["iss"] == "https://issuer" + EVIL
    assert report["audiences"] == [AUD, "aud" + EVIL]
    assert report["namespace"] == "ns" + EVIL and report["pod"] == "pod" + EVIL
    assert report["status"] == "audience-mismatch"
    assert "\\x1b" in report["reason"]  # the reason is a message for people: escaped
    assert_no_token(out + err, [token])


def test_watch_escapes_control_characters(
    projected_volume: ProjectedVolume, token_issuer: TokenIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    projected_volume.write({"token": _evil_token(token_issuer)})
    rc = main(["watch", str(projected_volume.token_path), "--timeout", "0.2"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    _assert_no_control(out + err)


def test_file_names_with_control_characters_are_escaped(
    tmp_path: Path, token_issuer: TokenIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    evil_dir = tmp_path / ("vol" + EVIL.replace("\n", ""))
    vol = ProjectedVolume(evil_dir)
    vol.write({"token": token_issuer.issue(audiences=[AUD])})
    rc, out, err = _run(capsys, "inspect", str(vol.token_path))
    assert rc == 0, err
    _assert_no_control(out + err)
    assert "vol\\x1b[2J" in out
    rc, out, err = _run(capsys, "inspect", str(evil_dir / "missing"))
    assert rc == 2
    _assert_no_control(out + err)
    assert "does not exist" in err and "vol\\x1b[2J" in err
    assert main(["watch", str(evil_dir / "missing"), "--timeout", "0.1"]) == 2
    _, err = capsys.readouterr()
    _assert_no_control(err)


@pytest.mark.parametrize(
    ("claims", "rc", "needle"),
    [
        ({"exp": 1e14}, 0, "in over 1000 years"),  # beyond timedelta's range
        ({"exp": 2**62}, 0, "far future"),  # beyond datetime's range
        ({"iat": 3e11}, 1, "iat is over 1000 years in the future"),
        ({"nbf": 3e11, "iat": -3e11}, 1, "nbf is over 1000 years in the future"),
        ({"iat": 1.8e38}, 2, "'iat' must be a number of seconds, got a number out of range"),  # not a time
        ({"exp": -1e14, "iat": -2e14, "nbf": -2e14}, 1, "over 1000 years ago"),
    ],
)
def test_inspect_survives_numeric_claims_that_overflow(
    kubelet: Kubelet, capsys: pytest.CaptureFixture[str], claims: dict[str, float], rc: int, needle: str
) -> None:
    payload = kubelet.issuer.claims(audiences=[AUD])
    payload.update(claims)
    kubelet.volume.rotate(kubelet.issuer.sign(payload))
    projected_volume = kubelet.volume
    got, out, err = _run(capsys, "inspect", str(projected_volume.token_path))
    assert got == rc, err
    assert needle in out + err
    human = out.split("claims (decoded")[0] + err  # the claims block shows the raw numbers
    assert not re.search(r"\d{12,}", human), human
    got, out, err = _run(capsys, "inspect", str(projected_volume.token_path), "--json")
    assert got == rc, err

    def no_constant(name: str) -> None:
        raise AssertionError(f"{name} in the JSON output")

    report = json.loads(out, parse_constant=no_constant)  # no Infinity/NaN: strict JSON
    if rc != 2:  # a file error reports no claims
        assert report["claims"] == {**report["claims"], **claims}
    assert report["valid"] is (rc == 0)
    assert "Traceback" not in err


def test_inspect_a_token_instead_of_its_path(
    kubelet: Kubelet, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    token = kubelet.current
    assert token is not None
    for argv in (["inspect", token], ["inspect", token + "\n", "--json"], ["watch", token, "--timeout", "1"]):
        rc, out, err = _run(capsys, *argv)
        assert rc == 2, argv
        assert "looks like a token, not a path" in err, err
        assert err.count("\n") == 1
        assert_no_token(out + err, [token])
        if "--json" in argv:
            assert json.loads(out)["status"] == "file-error"
    # a token inside a path too (a directory named after it)
    rc, out, err = _run(capsys, "inspect", str(tmp_path / token / "token"))
    assert rc == 2 and "looks like a token, not a path" in err
    assert_no_token(out + err, [token])


def test_every_echoed_path_is_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    long = str(tmp_path) + "/" + "d" * 200 + "/" + "x" * 5000
    for argv in (["inspect", long], ["inspect", long, "--json"], ["watch", long, "--timeout", "1"]):
        rc, out, err = _run(capsys, *argv)
        assert rc == 2, err
        assert len(err) < 1000 and len(out) < 1000, (len(out), len(err))
        assert "[...]" in err


def test_library_warnings_reach_stderr(
    kubelet: Kubelet,
    projected_volume: ProjectedVolume,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Any library warning while a command runs (here: one the reader logs) is shown on stderr,
    # escaped, never with a token in it; DEBUG/INFO records are not.
    import logging

    import sa_token._read

    token = kubelet.current
    assert token is not None
    real = sa_token._read.read_token_file

    def noisy(path: str) -> Token:
        logging.getLogger("sa_token._read").warning("sa-token: something odd \x1b[2J with %s", token)
        logging.getLogger("sa_token._read").info("sa-token: chatter")
        return real(path)

    monkeypatch.setattr(sa_token._read, "read_token_file", noisy)
    rc, _, err = _run(capsys, "inspect", str(projected_volume.token_path))
    assert rc == 0
    assert "sa-token: warning: something odd \\x1b[2J with <a token>" in err
    assert "chatter" not in err
    assert_no_token(err, [token])
    assert not any(
        isinstance(h, logging.StreamHandler) and h.stream is sys.stderr
        for h in logging.getLogger("sa_token").handlers
    ), "the handler is removed after main()"

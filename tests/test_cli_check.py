"""``sa-token check``: the exit code and the one line for each state, agreement with
`TokenSource`, ``inspect --json``'s ``check``, and the probes in the examples' manifests."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from sa_token import TokenSource
from sa_token.cli import build_parser, check, main
from sa_token.errors import TokenError
from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer, assert_no_token

AUD = "sa-token-test"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["check", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line(out: str, err: str) -> str:
    text = out + err
    assert text.count("\n") == 1, text  # exactly one line in all
    return text.strip()


# (what the kubelet writes, extra arguments, exit code, start of the line)
CASES: dict[str, tuple[dict[str, Any], list[str], int, str]] = {
    "valid": ({}, [], 0, "valid: token at "),
    "valid-for-10m": ({}, ["--min-remaining", "10m"], 0, "valid: token at "),
    "expiring": ({}, ["--min-remaining", "2h"], 1, "sa-token: expiring: token at "),
    "expired": ({"now": -7200, "expiration_seconds": 600}, [], 1, "sa-token: expired: token at "),
    "not-yet-valid": ({"now": 3600}, [], 1, "sa-token: not-yet-valid: token at "),
    "within-leeway": ({"now": 30}, [], 0, "valid: token at "),  # nbf 30 s ahead: the 60 s leeway
    "audience-mismatch": ({}, ["--audience", "vault"], 1, "sa-token: audience-mismatch: token at "),
    "right-audience": ({}, ["--audience", AUD], 0, "valid: token at "),
    # rotation point (80% of 3600 s) 120 s ago: past the kubelet's 100 s margin, 600 s left
    "stale": ({"now": -3000}, [], 1, "sa-token: stale: token at "),
    "rotation-due-not-stale": ({"now": -2900}, [], 0, "valid: token at "),
}


@pytest.mark.parametrize("case", list(CASES))
def test_exit_code_and_line_for_each_state(
    case: str, kubelet: Kubelet, projected_volume: ProjectedVolume, capsys: pytest.CaptureFixture[str]
) -> None:
    mint, extra, code, start = CASES[case]
    if mint:
        kubelet.rotate(**{**mint, "now": time.time() + mint.get("now", 0)})
    path = str(projected_volume.token_path)
    rc, out, err = _run(capsys, path, *extra)
    assert rc == code, out + err
    line = _one_line(out, err)
    assert line.startswith(start + path), line
    assert (out if code == 0 else err).strip() == line  # success on stdout, failure on stderr
    assert_no_token(line, [kubelet.current])
    rc, out, err = _run(capsys, path, *extra, "--json")
    verdict = json.loads(out)
    assert rc == code and verdict["ok"] is (code == 0)
    assert verdict["state"] == start.removeprefix("sa-token: ").split(":")[0]
    assert verdict["line"] in line


def test_what_each_line_says(
    kubelet: Kubelet, projected_volume: ProjectedVolume, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(projected_volume.token_path)
    _, out, _ = _run(capsys, path)
    assert " expires in 60m (" in out or " expires in 59m (" in out
    _, _, err = _run(capsys, path, "--min-remaining", "1h30m")
    assert "less than --min-remaining 1h30m" in err
    kubelet.rotate(now=time.time() - 3000)
    _, _, err = _run(capsys, path)
    assert "passed its rotation point 2m ago" in err and "kubernetes issue 138689" in err
    assert "it expires in 10m" in err
    kubelet.rotate(now=time.time() - 7200, expiration_seconds=600)
    _, _, err = _run(capsys, path)
    assert "expired at" in err and "ago" in err


def test_a_token_without_exp_passes_any_min_remaining(
    projected_volume: ProjectedVolume, token_issuer: TokenIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    claims = token_issuer.claims(audiences=[AUD])
    del claims["exp"], claims["kubernetes.io"]["pod"]  # a legacy Secret-based token
    projected_volume.write({"token": token_issuer.sign(claims)})
    rc, out, err = _run(capsys, str(projected_volume.token_path), "--min-remaining", "3650d", "--json")
    assert rc == 0, err
    verdict = json.loads(out)
    assert verdict["state"] == "valid" and verdict["expires_at"] is None
    assert "never expires" in verdict["line"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, "missing"), (b"hello world", "malformed"), (b"   \n", "empty"), ("dir", "is-a-directory")],
)
def test_a_file_that_cannot_be_read_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: Optional[bytes | str], reason: str
) -> None:
    target = tmp_path / "token"
    if content == "dir":
        target.mkdir()
    elif isinstance(content, bytes):
        target.write_bytes(content)
    rc, out, err = _run(capsys, str(target))
    assert rc == 2
    assert out == "" and err.startswith(f"sa-token: {reason}: ") and err.count("\n") == 1
    assert "Traceback" not in err
    rc, out, _ = _run(capsys, str(target), "--json")
    assert rc == 2 and json.loads(out)["state"] == "file-error"


def test_a_token_instead_of_a_path_is_refused_and_not_echoed(
    kubelet: Kubelet, capsys: pytest.CaptureFixture[str]
) -> None:
    token = kubelet.current
    assert token is not None
    rc, out, err = _run(capsys, token)
    assert rc == 2 and "looks like a token, not a path" in err
    assert_no_token(out + err, [token])


def test_control_characters_in_the_path_are_escaped(
    tmp_path: Path, token_issuer: TokenIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    vol = ProjectedVolume(tmp_path / "evil\x1b[2J\nvalid: ok")
    vol.write({"token": token_issuer.issue(audiences=[AUD])})
    rc, out, _ = _run(capsys, str(vol.token_path))
    assert rc == 0
    assert "\x1b" not in out and out.count("\n") == 1
    assert "evil\\x1b[2J\\x0avalid: ok" in out


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0), ("600", 600), ("90s", 90), ("10m", 600), ("1h30m", 5400), ("1.5h", 5400), ("2d", 172800)],
)
def test_durations(text: str, seconds: float) -> None:
    assert check.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "m", "-5", "nan", "inf", "10m-", "1h 30m"])
def test_bad_durations_are_refused(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a duration"):
        check.parse_duration(text)
    with pytest.raises(SystemExit) as exc:
        main(["check", "/nonexistent", "--min-remaining", text])
    assert exc.value.code == 2
    assert "not a duration" in capsys.readouterr().err


def test_durations_with_units_read_as_the_pattern_says() -> None:
    """`check` reads ``1h30m`` by hand (no regular expression on a probe's path): it sums
    exactly what ``(\\d+(\\.\\d+)?[smhd])+`` matches, ASCII digits, and refuses the rest."""
    import re

    from hypothesis import given, settings
    from hypothesis import strategies as st

    def by_pattern(text: str) -> Optional[float]:
        if not re.fullmatch(r"(?:[0-9]+(?:\.[0-9]+)?[smhd])+", text):
            return None
        units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
        return sum(float(n) * units[u] for n, u in re.findall(r"([0-9]+(?:\.[0-9]+)?)([smhd])", text))

    @settings(max_examples=1000, deadline=None)
    @given(st.text(alphabet="0123456789.smhdx -\u0661", max_size=10))
    def agree(text: str) -> None:
        assert check._with_units(text) == by_pattern(text), repr(text)

    agree()


# ----------------------------------------------------------------------- agreement --------
@pytest.mark.parametrize(
    ("mint", "audience"),
    [
        ({}, None),
        ({}, AUD),
        ({}, "vault"),
        ({"now": -7200, "expiration_seconds": 600}, None),
        ({"now": 3600}, None),
        ({"now": 59}, None),
        ({"now": 61}, None),
        ({"now": -3000}, None),
    ],
)
def test_check_agrees_with_token_source(
    mint: dict[str, Any],
    audience: Optional[str],
    kubelet: Kubelet,
    projected_volume: ProjectedVolume,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """check passes exactly when a `TokenSource` would serve the token and does not call it
    stale (the one thing check is stricter about)."""
    if mint:
        kubelet.rotate(**{**mint, "now": time.time() + mint.get("now", 0)})
    path = str(projected_volume.token_path)
    try:
        with TokenSource(path, audience=audience, watch=False) as src:
            status = src.status()
            usable = status.valid and not status.stale
    except TokenError:
        usable = False
    rc, _, _ = _run(capsys, path, *(["--audience", audience] if audience else []))
    assert rc == (0 if usable else 1)


def test_inspect_json_includes_the_check(
    kubelet: Kubelet, projected_volume: ProjectedVolume, capsys: pytest.CaptureFixture[str]
) -> None:
    kubelet.rotate(now=time.time() - 3000)  # stale: inspect still says valid, check does not
    path = str(projected_volume.token_path)
    assert main(["inspect", path, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rc, out, _ = _run(capsys, path, "--json")
    alone = json.loads(out)
    assert rc == 1 and report["valid"] is True
    same = ("path", "state", "ok", "expires_at", "rotation_due_at", "stale", "min_remaining_seconds")
    assert {k: report["check"][k] for k in same} == {k: alone[k] for k in same}
    assert report["check"]["state"] == "stale" and report["check"]["stale"] is True


# ----------------------------------------------------------------------- the manifests ----
def _probes(manifest: Path) -> list[tuple[list[str], dict[str, Any], dict[str, Any]]]:
    """Every exec probe: (command, the projected token source it reads, the probe)."""
    yaml = pytest.importorskip("yaml")  # PyYAML comes with mkdocs and the kubernetes package
    found = []
    for doc in yaml.safe_load_all(manifest.read_text()):
        spec = doc.get("spec", {})
        spec = spec.get("template", {}).get("spec", spec)
        for container in spec.get("containers", []):
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                probe = container.get(kind)
                if probe and "exec" in probe:
                    command = probe["exec"]["command"]
                    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                    directory, file = command[2].rsplit("/", 1)
                    volume = next(v for v in spec["volumes"] if v["name"] == mounts[directory])
                    sources = [
                        s["serviceAccountToken"]
                        for s in volume["projected"]["sources"]
                        if "serviceAccountToken" in s
                    ]
                    (sat,) = [s for s in sources if s["path"] == file]
                    found.append((command, sat, probe))
    return found


@pytest.mark.parametrize("manifest", ["list-pods.yaml", "vault-pod.yaml"])
def test_the_examples_probe_is_a_check_the_cli_accepts_and_passes(
    manifest: str, tmp_path: Path, token_issuer: TokenIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    probes = _probes(EXAMPLES / manifest)
    assert probes, f"{manifest} has no exec probe"
    for command, sat, probe in probes:
        assert command[:2] == ["sa-token", "check"]
        args = build_parser().parse_args(command[1:])
        assert args.run is check.run
        assert probe.get("timeoutSeconds", 1) >= 5  # a Python start on a busy node
        # The same command, against a volume as the manifest projects it, passes...
        lifetime = sat["expirationSeconds"]
        audiences = [sat.get("audience", "https://kubernetes.default.svc.cluster.local")]
        vol = ProjectedVolume(tmp_path / manifest / "tokens", token_key=command[2].rsplit("/", 1)[1])
        kubelet = Kubelet(vol, token_issuer, audiences=audiences, expiration_seconds=lifetime)
        kubelet.rotate()
        local = [*command[1:2], str(vol.token_path), *command[3:]]
        assert main(local) == 0, capsys.readouterr()
        # ...and still does just before the kubelet's rotation point: --min-remaining is less
        # than the 20% of the lifetime left there, so a healthy pod never flaps.
        kubelet.rotate(now=time.time() - 0.8 * lifetime + 5)
        assert main(local) == 0, capsys.readouterr()
        assert args.min_remaining < 0.2 * lifetime


def test_the_console_script_as_a_probe_runs_it(kubelet: Kubelet, projected_volume: ProjectedVolume) -> None:
    """What the kubelet runs: the installed ``sa-token`` script, in a process of its own."""
    script = Path(sys.executable).parent / "sa-token"
    proc = subprocess.run(
        [str(script), "check", str(projected_volume.token_path), "--min-remaining", "10m"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("valid: ") and proc.stdout.count("\n") == 1 and proc.stderr == ""
    proc = subprocess.run(
        [str(script), "check", str(projected_volume.token_path), "--min-remaining", "2h"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1 and proc.stdout == "" and proc.stderr.startswith("sa-token: expiring: ")


# ------------------------------------------------------------ the probe's own argument reader
_WORDS = [
    "/p", "/q", "a=b", "", "-", "--", "-h", "--help", "--json", "--json=1", "--audience", "--audience=",
    "--audience=v=w", "--aud", "vault", "-x", "--min-remaining", "--min-remaining=10m", "--min", "10m",
    "1h30m", "90", "-5", "bad", "0", "inf", "--version", "check",
]  # fmt: skip


def test_the_probe_reads_its_arguments_as_argparse_does() -> None:
    """`check.probe_args` (no argparse on an exec probe's path) gives argparse's answer for
    every word list it accepts, and leaves the rest (help, abbreviations, mistakes) to argparse.
    Broken on purpose (a second PATH taken as the path, an unknown option ignored), it fails."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    def argparse_says(words: list[str]) -> Optional[dict[str, Any]]:
        try:
            parsed = vars(build_parser(["check"]).parse_args(["check", *words]))
        except SystemExit:
            return None
        return {k: v for k, v in parsed.items() if k != "command"}

    @settings(max_examples=600, deadline=None)
    @given(st.lists(st.sampled_from(_WORDS), max_size=5))
    def agree(words: list[str]) -> None:
        ours = check.probe_args(words)
        if ours is not None:
            assert vars(ours) == argparse_says(words), words

    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        agree()
    # The forms a probe uses are read without argparse.
    for words in ([], ["/p"], ["/p", "--audience", "vault", "--min-remaining", "10m"], ["--json", "--audience=v"]):
        assert check.probe_args(words) is not None, words


_PROBE_IMPORTS = """
import re, sys  # what the console script pip writes imports before sa-token
before = set(sys.modules)
sys.argv = ["sa-token", "check", sys.argv[1], "--audience", "%s", "--min-remaining", "1m"]
from sa_token.cli import main
code = main()
print(code, sorted(n for n in set(sys.modules) - before if not n.startswith(("sa_token", "encodings"))))
"""


def test_a_probe_loads_no_more_than_it_needs(kubelet: Kubelet, projected_volume: ProjectedVolume) -> None:
    """`sa-token check` as an exec probe loads no argparse (nor its gettext and locale), no
    json package, no math, logging, typing or collections.abc: the modules it needs and no others."""
    code = _PROBE_IMPORTS % AUD
    out = subprocess.run(
        [sys.executable, "-c", code, str(projected_volume.token_path)], capture_output=True, text=True, check=True
    ).stdout
    rc, _, loaded = out.splitlines()[-1].partition(" ")
    assert rc == "0", out
    import ast

    assert set(ast.literal_eval(loaded)) <= {"__future__", "_json", "binascii", "errno"}, loaded

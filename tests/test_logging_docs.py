"""The ``sa_token`` logger is documented where users look first, and the documented two-line
setup really shows its warnings (issue 10, finding 6): the library adds only a ``NullHandler``,
so without it a failed re-read is silent."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A re-read that fails while the last good token is kept: the library's most common warning.
SCENARIO = textwrap.dedent(
    """
    import pathlib, tempfile
    from sa_token import TokenSource
    from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer

    volume = ProjectedVolume(pathlib.Path(tempfile.mkdtemp()) / "serviceaccount")
    Kubelet(volume, TokenIssuer(), audiences=["app"], expiration_seconds=3600).rotate()
    source = TokenSource(volume.token_path, audience="app", watch=False)
    volume.rotate("not-a-token")
    try:
        source.reload()
    except Exception as exc:
        print("reload raised", type(exc).__name__)
    """
)


def _section(markdown: str, heading: str) -> str:
    m = re.search(rf"^(#+) {re.escape(heading)}\n(.*?)(?=^#{{1,2}} |\Z)", markdown, re.M | re.S)
    assert m, f"no {heading!r} section"
    return m.group(2)


def _setup_snippet(section: str) -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", section, re.M | re.S)
    setups = [b for b in blocks if "logging.basicConfig" in b]
    assert setups, "no ```python block with the logging setup"
    assert len(setups[0].strip().splitlines()) <= 2, "the setup should stay two lines"
    return setups[0]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_readme_troubleshooting_and_getting_started_name_the_logger() -> None:
    for doc, heading in (
        ("README.md", "Logging"),
        ("docs/troubleshooting.md", "Logging"),
        ("docs/index.md", "See its warnings"),
    ):
        section = _section((ROOT / doc).read_text(encoding="utf-8"), heading)
        assert "`sa_token`" in section and "NullHandler" in section, doc
        _setup_snippet(section)
    table = _section((ROOT / "docs/troubleshooting.md").read_text(encoding="utf-8"), "Logging")
    for level in ("WARNING", "INFO", "DEBUG", "ERROR"):
        assert f"| `{level}` |" in table, level


def test_without_logging_setup_the_warning_is_silent() -> None:
    res = _run(SCENARIO)
    assert "reload raised MalformedTokenError" in res.stdout, res.stdout + res.stderr
    assert "sa-token" not in res.stderr


def test_the_documented_setup_shows_the_warning() -> None:
    snippet = _setup_snippet(_section((ROOT / "README.md").read_text(encoding="utf-8"), "Logging"))
    res = _run(snippet + SCENARIO)
    assert "reload raised MalformedTokenError" in res.stdout, res.stdout + res.stderr
    assert re.search(
        r"WARNING sa_token: sa-token: re-read failed: .*keeping the current token", res.stderr
    ), res.stderr

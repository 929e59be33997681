"""What a user gets from PyPI: the license, the metadata, a README whose links work there, and
the README's quick start that CI runs word for word (issue 10, findings 1 and 9).

The sdist and the wheel themselves are built and checked by .ci/run (``scripts/check_dist.py``;
building takes longer than a unit test should), which also runs this suite from the unpacked
sdist against the installed wheel.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
REPO_URL = "https://github.com/sa-token/sa-token"
SUPPORTED = ["3.9", "3.10", "3.11", "3.12", "3.13"]
STALE = "stale metadata? re-install the package (pip install -e .) after changing pyproject.toml"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_license_file_is_the_apache_2_license() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_metadata_declares_license_urls_and_each_python() -> None:
    meta = metadata.metadata("sa-token")
    assert meta.get("License-Expression") == "Apache-2.0", STALE
    assert "LICENSE" in (meta.get_all("License-File") or []), STALE
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert urls.get("Source") == REPO_URL, STALE
    assert urls.get("Issues") == f"{REPO_URL}/issues", STALE
    classifiers = meta.get_all("Classifier") or []
    versions = [
        c.rsplit(":: ", 1)[1]
        for c in classifiers
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    assert versions == SUPPORTED, STALE
    assert meta["Requires-Python"] == f">={SUPPORTED[0]}"
    assert f"{sys.version_info[0]}.{sys.version_info[1]}" in SUPPORTED, "a Python CI does not test"


def _links(markdown: str) -> list[str]:
    inline = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", markdown)
    reference = re.findall(r"^\[[^\]]+\]:\s*(\S+)", markdown, re.M)
    html = re.findall(r"(?:href|src)=\"([^\"]+)\"", markdown)
    return inline + reference + html


def test_readme_links_work_on_pypi() -> None:
    """PyPI renders the README without the repository around it: relative links break there."""
    links = _links((ROOT / "README.md").read_text(encoding="utf-8"))
    assert links, "the pattern found no link at all"
    relative = [u for u in links if not re.match(r"https?://|#|mailto:", u)]
    assert not relative, f"use {REPO_URL}/blob/main/<path> instead of {relative}"
    for url in links:
        m = re.match(rf"{re.escape(REPO_URL)}/(?:blob|tree)/main/(.+?)(?:#.*)?$", url)
        if m:
            assert (ROOT / m.group(1)).exists(), f"{url} points to a file that does not exist"


def test_readme_quickstart_is_the_two_commands_ci_runs() -> None:
    quickstart = _script("quickstart")
    commands = quickstart.quickstart_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(commands) == 2
    demo, suite = commands
    assert "pip install -e '.[demo]'" in demo and demo.endswith("sa-token demo")
    assert "pip install -e '.[test]'" in suite and suite.endswith("./scripts/test")


@pytest.mark.parametrize(
    ("readme", "error"),
    [
        ("# sa-token\n\n## Install\n", "no '## Quick start' section"),
        (
            "## Quick start\n\nRun the demo.\n\n## Install\n```console\npip install x\n```\n",
            "no ```console block",
        ),
        ("## Quick start\n```console\n# only a comment\n```\n", "holds no command"),
        ("## Quick start\n```console\n$ sa-token demo\n```\n", "without a prompt"),
    ],
)
def test_quickstart_extraction_fails_loudly(readme: str, error: str) -> None:
    quickstart = _script("quickstart")
    with pytest.raises(ValueError, match=re.escape(error)):
        quickstart.quickstart_commands(readme)


def test_the_core_imports_only_the_standard_library() -> None:
    """`pip install sa-token` installs no dependency: `import sa_token` and a `TokenSource`
    load nothing from site-packages (pyjwt and watchdog were dependencies)."""
    import subprocess
    import sys

    code = (
        "import sys, sysconfig; before = set(sys.modules);"
        "import sa_token, sa_token._source, sa_token._hub, sa_token.errors;"
        "site = sysconfig.get_paths()['purelib'];"
        "bad = sorted(n for n in set(sys.modules) - before if getattr(sys.modules[n], '__file__', None)"
        " and sys.modules[n].__file__.startswith(site) and not n.startswith('sa_token'));"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out

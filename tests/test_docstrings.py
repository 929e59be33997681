"""Docstrings render as intended (issue 10, finding 10).

mkdocstrings renders them as Markdown with Google-style sections: a Sphinx role (``:meth:`x```)
shows up as literal text on the site, a doctest (``>>>`` lines) runs together into one
paragraph and a reST literal block (``text::``) keeps its ``::``. CI's ``mkdocs build`` also
greps the built pages for literal roles. The fixtures of the pytest plugin have docstrings, so
``pytest --fixtures`` explains them; and the test kit names the extra to install.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
ROLE = re.compile(r":(?:py:)?(?:meth|class|mod|func|data|attr|exc|obj|const|ref):`")


def docstrings() -> Iterator[tuple[str, str]]:
    """(``file:line``, cleaned docstring) of every module, class and function under src/."""
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc:
                    line = node.body[0].lineno
                    yield f"{path.relative_to(SRC)}:{line}", doc


def outside_fences(doc: str) -> Iterator[str]:
    fenced = False
    for line in doc.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield line


def problems(doc: str) -> list[str]:
    """What would render badly in one docstring."""
    found = [f"Sphinx role {m.group(0)}" for m in ROLE.finditer(doc)]
    for line in outside_fences(doc):
        if line.lstrip().startswith(">>>"):
            found.append(f"doctest outside a ```python block: {line.strip()}")
        elif line.rstrip().endswith("::"):
            found.append(f"reST literal block (use a ``` block): {line.strip()}")
    return found


def test_the_scan_sees_every_docstring() -> None:
    found = dict(docstrings())
    assert len(found) > 100
    assert any(where.startswith("sa_token/_source.py:") for where in found)


def test_docstrings_are_markdown() -> None:
    bad = [f"{where}: {p}" for where, doc in docstrings() for p in problems(doc)]
    assert not bad, "write Markdown: `name` or [`name`][sa_token.Name], ```python blocks\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("doc", "count"),
    [
        ("See :meth:`TokenSource.token` and :class:`~sa_token.CABundle`.", 2),
        ("Example:\n\n>>> src.token()", 1),
        ("Commands::\n\n    sa-token inspect", 1),
        ("See [`TokenSource.token()`][sa_token.TokenSource.token].", 0),
        ("Fine:\n\n```python\n>>> kept as is inside a fence\n```", 0),
    ],
)
def test_the_check_catches_what_it_looks_for(doc: str, count: int) -> None:
    assert len(problems(doc)) == count


def test_pytest_fixtures_shows_what_each_fixture_gives(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "--fixtures", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode in (0, 5), res.stdout + res.stderr  # 5: no tests collected
    for name in ("token_issuer", "projected_volume", "kubelet"):
        block = re.search(rf"^{name}\b.*\n((?:    .*\n)+)", res.stdout, re.M)
        assert block, f"{name} is not listed:\n{res.stdout}"
        assert "no docstring available" not in block.group(1), name
        assert len(block.group(1).split()) > 10, block.group(1)


def test_token_issuer_without_cryptography_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from sa_token.testing import TokenIssuer

    for name in [m for m in sys.modules if m == "cryptography" or m.startswith("cryptography.")]:
        monkeypatch.setitem(sys.modules, name, None)  # "import cryptography..." now fails
    monkeypatch.setitem(sys.modules, "cryptography", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'sa-token[testing]'")) as info:
        TokenIssuer()
    assert "cryptography" in str(info.value)
    assert isinstance(info.value.__cause__, ImportError)

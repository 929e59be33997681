#!/usr/bin/env python3
"""Check the built sdist and wheel hold what they must (CI runs it after building them).

    python scripts/check_dist.py dist/

* the sdist: every file the repository tracks under tests/, examples/, bench/, docs/ and scripts/
  (so the test suite runs from the unpacked sdist), plus LICENSE, README.md, pyproject.toml,
  CHANGELOG.md and mkdocs.yml, and no bytecode;
* the wheel: every module of src/sa_token, py.typed, the LICENSE, the ``sa-token`` console
  script and the pytest plugin entry point, and nothing outside the package.

Standard library only. Exits 1 listing every problem.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SDIST_DIRS = ("tests", "examples", "bench", "docs", "scripts")
SDIST_FILES = ("LICENSE", "README.md", "pyproject.toml", "CHANGELOG.md", "mkdocs.yml", "MANIFEST.in")


def tracked(*dirs: str) -> list[str]:
    """The files git tracks under ``dirs`` (every file there when this is not a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--", *dirs], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        files = out.split()
    except (OSError, subprocess.CalledProcessError):
        files = []
    if not files:
        files = [
            str(p.relative_to(ROOT))
            for d in dirs
            for p in (ROOT / d).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        ]
    return sorted(files)


def check_sdist(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        names = tar.getnames()
    top = names[0].split("/", 1)[0]
    inside = {n.split("/", 1)[1] for n in names if "/" in n}
    problems = [f"sdist lacks {f}" for f in [*SDIST_FILES, *tracked(*SDIST_DIRS)] if f not in inside]
    problems += [f"sdist holds bytecode: {n}" for n in sorted(inside) if n.endswith((".pyc", ".pyo"))]
    print(f"{path.name}: {len(inside)} files under {top}/")
    return problems


def check_wheel(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as whl:
        names = set(whl.namelist())
        dist_info = next(n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info"))
        entry_points = whl.read(f"{dist_info}/entry_points.txt").decode()
    modules = {str(p.relative_to(ROOT / "src")) for p in (ROOT / "src" / "sa_token").rglob("*.py")}
    problems = [f"wheel lacks {m}" for m in sorted(modules | {"sa_token/py.typed"}) if m not in names]
    if f"{dist_info}/licenses/LICENSE" not in names:
        problems.append("wheel lacks the LICENSE (dist-info/licenses/LICENSE)")
    if "sa-token = sa_token.cli:main" not in entry_points:
        problems.append("wheel lacks the sa-token console script")
    if "sa_token = sa_token.testing.pytest_plugin" not in entry_points:
        problems.append("wheel lacks the pytest11 entry point")
    problems += [
        f"wheel holds {n} (outside the package)"
        for n in sorted(names)
        if n.split("/")[0] not in {"sa_token", dist_info}
    ]
    print(f"{path.name}: {len(names)} files")
    return problems


def main(argv: list[str]) -> int:
    dist = Path(argv[1] if len(argv) > 1 else ROOT / "dist")
    sdists, wheels = sorted(dist.glob("*.tar.gz")), sorted(dist.glob("*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        print(
            f"check_dist: expected one sdist and one wheel in {dist}, found {sdists + wheels}",
            file=sys.stderr,
        )
        return 1
    problems = check_sdist(sdists[0]) + check_wheel(wheels[0])
    for p in problems:
        print(f"check_dist: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

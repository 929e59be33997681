#!/usr/bin/env python3
"""Print the commands of the README's "## Quick start" block, one per line, exactly as written.

    python3 scripts/quickstart.py [README.md]

.ci/run runs what this prints, so the README's commands can never drift from what CI checks.
Exits 1 with a message when the section, its ```console block, or a command in it is missing:
CI must fail loudly rather than check nothing. Standard library only (runs before any install).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HEADING = "## Quick start"


def quickstart_commands(readme: str) -> list[str]:
    """The non-comment lines of the first ```console block under the Quick start heading."""
    lines = readme.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == HEADING)
    except StopIteration:
        raise ValueError(f"README has no {HEADING!r} section") from None
    section, fenced = [], False
    for line in lines[start + 1 :]:
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,2} ", line):  # the next section, same level or higher
            break
        section.append(line)
    text = "\n".join(section)
    block = re.search(r"^```console\n(.*?)^```", text, re.S | re.M)
    if block is None:
        raise ValueError(f"README's {HEADING!r} section has no ```console block")
    commands = [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not commands:
        raise ValueError(f"README's {HEADING!r} block holds no command")
    for cmd in commands:
        if cmd.startswith("$ ") or cmd.rstrip().endswith("\\"):
            raise ValueError(f"write each quick-start command on one line, without a prompt: {cmd!r}")
    return commands


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else Path(__file__).resolve().parent.parent / "README.md")
    try:
        commands = quickstart_commands(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"quickstart: {path}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(commands))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""How the command line writes: human lines, tables, JSON lines, one-line failures.

Every byte the CLI writes goes through this module, which is where its two promises hold:

* **nothing a token, a file or the library supplied can control the terminal**: human text is
  passed through `sa_token._fmt.text` (control characters shown as ``\\x1b``...), and colour is
  added here, after escaping, only to the spans the CLI marks;
* **no token is ever printed**: every line, human or JSON, has anything that looks like a JWT
  replaced (`sa_token._fmt.redact`), whatever the caller passed.

JSON keeps claims exact: ``json.dumps`` escapes control characters itself (``\\u001b``).
"""

from __future__ import annotations

import os
import sys

from sa_token import _fmt

TYPE_CHECKING = False  # not typing's: this module is on `sa-token check`'s path (an exec probe)
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any, Optional, TextIO, Union

__all__ = [
    "EXIT_FILE",
    "EXIT_INVALID",
    "EXIT_OK",
    "Output",
    "Part",
    "Span",
    "bad",
    "dim",
    "fail",
    "ok",
    "shown",
    "warn",
]

# The exit codes every command shares (and `sa-token check` will keep).
EXIT_OK = 0  # valid (or a clean stop)
EXIT_INVALID = 1  # the token must not be used: expired, not yet valid, wrong audience
EXIT_FILE = 2  # the file is missing, unreadable or not a token (or: a missing dependency)

# The library prefixes its log messages with this; the CLI says it once per line itself.
LIBRARY_PREFIX = "sa-token: "


class Span(tuple):  # type: ignore[type-arg]
    """A piece of text the CLI wants in colour (an SGR code such as ``"32"``, green): the pair
    ``(text, style)``. A plain tuple, not a ``typing.NamedTuple``: the probe never imports typing."""

    __slots__ = ()

    def __new__(cls, text: str, style: str) -> Span:
        return tuple.__new__(cls, (text, style))

    @property
    def text(self) -> str:
        return self[0]  # type: ignore[no-any-return]

    @property
    def style(self) -> str:
        return self[1]  # type: ignore[no-any-return]


if TYPE_CHECKING:
    Part = Union[str, Span]
else:
    Part = object  # (only annotations use it)


def ok(text: str) -> Span:
    return Span(text, "32")  # green


def bad(text: str) -> Span:
    return Span(text, "31;1")  # bold red


def warn(text: str) -> Span:
    return Span(text, "33")  # yellow


def dim(text: str) -> Span:
    return Span(text, "2")


def shown(value: object) -> str:
    """``value`` as the CLI shows it to people: control characters escaped, tokens replaced."""
    return _fmt.redact(_fmt.text(value))


def use_colour(stream: TextIO) -> bool:
    """Colour only for a terminal, never with ``NO_COLOR`` set (no-color.org) or ``TERM=dumb``."""
    isatty = getattr(stream, "isatty", None)
    return bool(
        isatty is not None and isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
    )


class Output:
    """Standard output, for one command: human lines and tables, or JSON lines."""

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        self.stream = sys.stdout if stream is None else stream
        self.colour = use_colour(self.stream)

    def render(self, parts: Iterable[Part]) -> str:
        out = []
        for part in parts:
            if isinstance(part, Span):
                text = shown(part.text)
                out.append(f"\033[{part.style}m{text}\033[0m" if self.colour else text)
            else:
                out.append(shown(part))
        return "".join(out)

    def line(self, *parts: Part) -> None:
        """One line of text; a line feed inside a part is shown escaped, never obeyed."""
        print(self.render(parts), file=self.stream, flush=True)

    def lines(self, block: str) -> None:
        """Several lines of the CLI's own making (one `line` each)."""
        for text in block.split("\n"):
            self.line(text)

    def table(self, rows: Sequence[tuple[str, Part]]) -> None:
        """``key  value`` rows, keys padded to one column."""
        width = max(len(key) for key, _ in rows)
        for key, value in rows:
            self.line(key.ljust(width), "  ", value)

    def json(self, obj: Mapping[str, Any]) -> None:
        """One JSON object on one line: strict JSON (no ``NaN``/``Infinity``), never a token."""
        import json  # here: a probe that prints one human line never needs it

        print(_fmt.redact(json.dumps(_strict(obj), default=str)), file=self.stream, flush=True)


def _strict(value: Any) -> Any:
    """``value`` with mappings made dicts and non-finite floats (a claim of ``1e999``) strings."""
    from collections.abc import Mapping  # here: `sa-token check` prints no JSON

    if isinstance(value, float) and not _fmt.finite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def fail(message: str) -> None:
    """The one-line reason on stderr that every failure prints."""
    print(f"sa-token: {shown(message)}", file=sys.stderr, flush=True)

"""The ``sa_token`` logger, made at its first use.

``logging`` costs about a third of ``import sa_token`` (it imports ``traceback``, ``string``,
``warnings``...), and most processes, ``sa-token check`` run as an exec probe every few seconds
among them, never log a line from sa-token. So the core modules log through `log`, which
imports ``logging`` and gets ``logging.getLogger("sa_token")`` the first time it is used, and
adds the library's one ``NullHandler`` then (before the first line is logged, as a library
must: the application's configuration decides where lines go).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: this module is on `sa-token check`'s path, typing is not
if TYPE_CHECKING:
    import logging
    from typing import Any, Callable, Optional

__all__ = ["DEBUG", "ERROR", "INFO", "ON_MADE", "WARNING", "log", "logger"]

# logging's level numbers (a stable part of its API), for code that must not import it.
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40

_logger: Optional[logging.Logger] = None
# Called (no argument) once the logger is made: the CLI routes the library's lines to stderr
# then, so that a command that logs nothing never imports logging.
ON_MADE: list[Callable[[], None]] = []


def logger() -> logging.Logger:
    """``logging.getLogger("sa_token")``, with the library's ``NullHandler``."""
    global _logger  # noqa: PLW0603 - one logger per process, made on first use
    if _logger is None:
        import logging

        made = logging.getLogger("sa_token")
        if not any(type(h) is logging.NullHandler for h in made.handlers):
            made.addHandler(logging.NullHandler())
        _logger = made
        for hook in list(ON_MADE):
            hook()
    return _logger


class _Lazy:
    """Stands for the logger until it is needed: every attribute is the real logger's."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        return getattr(logger(), name)

    def __repr__(self) -> str:
        return "<the sa_token logger, made at first use>"


log: logging.Logger = _Lazy()  # type: ignore[assignment]

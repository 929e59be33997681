"""The ``sa_token`` logger, made at its first use.

``logging`` costs about a third of ``import sa_token`` (it imports ``traceback``, ``string``,
``warnings``...), and most processes, ``sa-token check`` run as an exec probe every few seconds
among them, never log a line from sa-token. So the core modules log through `log`, which
imports ``logging`` and gets ``logging.getLogger("sa_token")`` the first time it is used, and
adds the library's one ``NullHandler`` then (before the first line is logged, as a library
must: the application's configuration decides where lines go).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, cast

if TYPE_CHECKING:
    import logging

__all__ = ["DEBUG", "ERROR", "INFO", "WARNING", "log", "logger"]

# logging's level numbers (a stable part of its API), for code that must not import it.
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40

_logger: Optional[logging.Logger] = None


def logger() -> logging.Logger:
    """``logging.getLogger("sa_token")``, with the library's ``NullHandler``."""
    global _logger  # noqa: PLW0603 - one logger per process, made on first use
    if _logger is None:
        import logging

        made = logging.getLogger("sa_token")
        if not any(type(h) is logging.NullHandler for h in made.handlers):
            made.addHandler(logging.NullHandler())
        _logger = made
    return _logger


class _Lazy:
    """Stands for the logger until it is needed: every attribute is the real logger's."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        return getattr(logger(), name)

    def __repr__(self) -> str:
        return "<the sa_token logger, made at first use>"


log = cast("logging.Logger", _Lazy())

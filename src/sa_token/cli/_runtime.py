"""What a running command needs beyond its output: the library's log lines routed to it (on
stderr, or as events on a queue), and SIGTERM as an exception. ``logging`` is imported only by
the commands that show the library's lines themselves, or once the library logs a line.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any, Optional

from sa_token import _log

from ._output import LIBRARY_PREFIX, shown

__all__ = ["QueueLogHandler", "StderrLogHandler", "Stop", "library_logs", "stop_on_signals"]


class StderrLogHandler(logging.Handler):
    """The library's warnings on stderr, one escaped line each: ``sa-token: warning: ...``.

    No traceback: a log record's exception is summed up as ``(TypeName: message)``.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        import sys

        try:
            text = record.getMessage()
            if text.startswith(LIBRARY_PREFIX):
                text = text[len(LIBRARY_PREFIX) :]
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                text = f"{text} ({type(exc).__name__}: {exc})"
            print(f"sa-token: {record.levelname.lower()}: {shown(text)}", file=sys.stderr, flush=True)
        except Exception:  # a broken record or a closed stderr must not kill the thread that logged
            self.handleError(record)


class QueueLogHandler(logging.Handler):
    """The library's warnings as events ``("read_failed" | "warning", message)`` on a queue,
    for commands that show them in their own stream (`watch`, `demo`)."""

    def __init__(self, events: queue.Queue[tuple[str, Any]]) -> None:
        super().__init__(logging.WARNING)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # a broken record must not kill the thread that logged it
            return
        if msg.startswith(LIBRARY_PREFIX):
            msg = msg[len(LIBRARY_PREFIX) :]
        kind = "read_failed" if msg.startswith("re-read failed") else "warning"
        self.events.put((kind, msg))


_routes: list[logging.Handler] = []
_routes_lock = threading.Lock()


@contextlib.contextmanager
def library_logs(handler: logging.Handler) -> Iterator[None]:
    """Send the ``sa_token`` logger's records to ``handler`` (instead of the handler an outer
    `library_logs` installed) for the duration. Other handlers are left alone.

    The logger is made here (`sa_token._log.logger`) if it was not yet: its made-hooks install
    the routes that wait for it (`sa-token`'s stderr route) first, as the outer ones, so that they
    cannot take over from this one when the library logs its first line."""
    logger = _log.logger()
    with _routes_lock:
        outer = _routes[-1] if _routes else None
        _routes.append(handler)
        logger.addHandler(handler)
        if outer is not None:
            logger.removeHandler(outer)
    try:
        yield
    finally:
        with _routes_lock:
            _routes.remove(handler)
            logger.removeHandler(handler)
            if outer is not None and outer in _routes:
                logger.addHandler(outer)


# ----------------------------------------------------------------------- signals ----------
class Stop(Exception):
    """Raised in the main thread by the SIGTERM handler (SIGINT raises ``KeyboardInterrupt``)."""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM raises `Stop` in the main thread for the duration; the old handler is restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Optional[FrameType]) -> None:
        raise Stop(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

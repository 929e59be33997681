"""The one set of formatters for what sa-token shows people: times, durations, paths, text.

Every message, log line and CLI output goes through these, so that a timestamp far outside
the datetime range, a path of 100 KB or a claim carrying terminal escape sequences is shown
safely and the same way everywhere.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from typing import Optional, Union

__all__ = ["MAX_SHOWN_PATH", "duration", "iso", "looks_like_jwt", "path", "redact", "relative", "text"]

# A path echoed in a message is cut to this many characters: enough for any real mount path
# (the kubelet's host paths are under 200), short enough that a whole JWT passed by mistake
# as a path (about 1 KiB) can never be shown.
MAX_SHOWN_PATH = 256

# C0 and C1 control characters and DEL: ANSI/OSC escape sequences start with ESC (0x1b) or a C1
# introducer (0x9b CSI, 0x9d OSC); a terminal acts on them.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A compact JWS: a base64url JSON header (always starts with '{"', base64 'eyJ'), payload and
# signature. Used to refuse showing a token that was passed where a path belongs.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

Instant = Union[float, datetime, None]


def _ts(value: Instant) -> Optional[float]:
    if value is None:
        return None
    return value.timestamp() if isinstance(value, datetime) else float(value)


def iso(value: Instant) -> Optional[str]:
    """``2026-12-06T01:46:36Z`` for a POSIX timestamp or an aware datetime; ``None`` for
    ``None``; ``"far future"``/``"far past"`` outside the range a datetime can hold."""
    ts = _ts(value)
    if ts is None:
        return None
    if math.isnan(ts):
        return "invalid time"
    try:
        return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "far future" if ts > 0 else "far past"


def duration(seconds: float) -> str:
    """A short, unsigned duration: ``4.5s``, ``45s``, ``41m``, ``1h59m``, ``3d4h``; ``forever``
    for an infinite one and ``over 1000 years`` for one that only a garbage claim produces."""
    if math.isnan(seconds):
        return "an unknown time"
    s = abs(seconds)
    if not math.isfinite(s):
        return "forever"
    if s >= 1000 * 365.25 * 86400:
        return "over 1000 years"
    if s < 90:
        return f"{s:.0f}s" if s >= 10 else f"{s:.1f}s".replace(".0s", "s")
    if s < 90 * 60:
        return f"{s / 60:.0f}m"
    if s < 48 * 3600:
        h, m = divmod(int(s // 60), 60)
        return f"{h}h{m:02d}m"
    d, h = divmod(int(s // 3600), 24)
    return f"{d}d{h}h"


def relative(value: Instant, now: float) -> str:
    """``in 41m`` or ``15s ago`` (``never`` for ``None``)."""
    ts = _ts(value)
    if ts is None:
        return "never"
    delta = ts - now
    return f"in {duration(delta)}" if delta >= 0 else f"{duration(delta)} ago"


def text(value: object) -> str:
    """``str(value)`` with control characters escaped (``\\x1b`` stays visible as text), for
    anything a token or a file supplied: claims, error texts, names."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def redact(value: str) -> str:
    """``value`` with every run that looks like a JWT replaced by ``<a token>``: a last guard
    for text shown to people that a library or a file supplied (log messages, error texts)."""
    return _JWT.sub("<a token>", value)


def looks_like_jwt(value: object) -> bool:
    """Whether ``value`` (a path, or any part of it) looks like a JWT rather than a file name."""
    return isinstance(value, str) and any(_JWT.fullmatch(part.strip()) for part in value.split("/"))


def path(value: object) -> str:
    """A path for a message: control characters escaped, cut to `MAX_SHOWN_PATH` characters
    (the middle is dropped, so both the directory and the file name stay visible), and never
    a token: a value that looks like a JWT is shown as ``<a token, not a path>``."""
    if looks_like_jwt(value):
        return "<a token, not a path>"
    shown = text(value)
    if len(shown) <= MAX_SHOWN_PATH:
        return shown
    keep = (MAX_SHOWN_PATH - 5) // 2
    return f"{shown[:keep]}[...]{shown[-keep:]}"

"""The one set of formatters for what sa-token shows people: times, durations, paths, text.

Every message, log line, CLI output and metrics label goes through these, so that a timestamp
far outside the datetime range, a path of 100 KB or a claim carrying terminal escape sequences
is shown safely and the same way everywhere. `text` is the one formatter of text that came from
outside (server bodies, claims, file names): it replaces anything shaped like a JWT and escapes
control, lone surrogate, bidi and line-separator characters, so such text can neither leak a
token, nor drive a terminal, nor reorder or split what a person reads, nor fail to encode.
"""

from __future__ import annotations

import re
import time

TYPE_CHECKING = False  # not typing's: this module is on `sa-token check`'s path (an exec probe)
if TYPE_CHECKING:
    from datetime import datetime
    from typing import Optional, Union

    Instant = Union[float, datetime, None]  # what the time formatters take

__all__ = [
    "MAX_SHOWN_PATH", "duration", "exact_duration", "iso", "looks_like_jwt", "path", "redact", "relative",
    "text",
]

# A path echoed in a message is cut to this many characters: enough for any real mount path
# (the kubelet's host paths are under 200), short enough that a whole JWT passed by mistake
# as a path (about 1 KiB) can never be shown.
MAX_SHOWN_PATH = 256

# Characters never shown as they are:
# * C0 and C1 control characters and DEL: ANSI/OSC escape sequences start with ESC (0x1b) or a C1
#   introducer (0x9b CSI, 0x9d OSC); a terminal acts on them;
# * lone surrogates (U+D800-U+DFFF: JSON "\ud800" decodes to one): no encoder writes them, so a
#   print() would raise UnicodeEncodeError;
# * bidi controls (U+061C, U+200E/F, U+202A-U+202E, U+2066-U+2069): they reorder what follows
#   ("Trojan Source", CVE-2021-42574);
# * the line and paragraph separators U+2028/U+2029 (U+0085 is a C1 character): a log line
#   that a reader splits in two.
# Compiled at first use (``re``'s own cache): printable ASCII, what nearly every path and claim
# is, never needs it, and compiling it is a few percent of an exec probe.
_CONTROL = "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
# A compact JWS: a base64url JSON header (always starts with '{"', base64 'eyJ'), payload and
# signature. Used to refuse showing a token that was passed where a path belongs.
# Compiled at first use too: a text without "eyJ" cannot hold one.
_JWT = r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
# The range a datetime holds (years 1 to 9999), in POSIX seconds: the times `iso` shows.
_FIRST_INSTANT = -62135596800.0
_PAST_LAST_INSTANT = 253402300800.0
# Not math's: the math module is a shared library, and the modules on an exec probe's path
# (`sa-token check`) need only these two tests of it.
_INF = float("inf")


def finite(x: float) -> bool:
    """``math.isfinite(x)``: not infinite and not NaN (NaN compares false with everything)."""
    return -_INF < x < _INF


def _nan(x: float) -> bool:
    return x != x  # noqa: PLR0124  # NaN is the one float unequal to itself


def _ts(value: Instant) -> Optional[float]:
    if value is None:
        return None
    return value.timestamp() if hasattr(value, "timestamp") else float(value)  # a datetime, or seconds


def iso(value: Instant) -> Optional[str]:
    """``2026-12-06T01:46:36Z`` for a POSIX timestamp or an aware datetime; ``None`` for
    ``None``; ``"far future"``/``"far past"`` outside the range a datetime can hold."""
    ts = _ts(value)
    if ts is None:
        return None
    if _nan(ts):
        return "invalid time"
    if not _FIRST_INSTANT <= ts < _PAST_LAST_INSTANT:
        return "far future" if ts > 0 else "far past"
    # time.gmtime, not datetime: `sa-token check` prints one of these and never imports datetime
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def duration(seconds: float) -> str:
    """A short, unsigned duration: ``4.5s``, ``45s``, ``41m``, ``1h59m``, ``3d4h``; ``forever``
    for an infinite one and ``over 1000 years`` for one that only a garbage claim produces."""
    if _nan(seconds):
        return "an unknown time"
    s = abs(seconds)
    if not finite(s):
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


def exact_duration(seconds: float) -> str:
    """A duration to the second, never rounded up: ``9m55s``, ``1h02m03s``, ``4.5s``; for
    figures set against a threshold (``sa-token check --min-remaining``), where `duration`'s
    rounding (595 s is ``10m``) would contradict the verdict."""
    if not finite(seconds):
        return duration(seconds)
    s = abs(seconds)
    if s < 10:
        return f"{(s * 10) // 1 / 10:.1f}s".replace(".0s", "s")
    whole = int(s)
    h, rest = divmod(whole, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m{sec:02d}s"
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def relative(value: Instant, now: float) -> str:
    """``in 41m`` or ``15s ago`` (``never`` for ``None``)."""
    ts = _ts(value)
    if ts is None:
        return "never"
    delta = ts - now
    return f"in {duration(delta)}" if delta >= 0 else f"{duration(delta)} ago"


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def text(value: object, *, limit: Optional[int] = None) -> str:
    """``str(value)`` made safe to show: every run that looks like a JWT replaced by
    ``<a token>``, control, lone surrogate, bidi and line-separator characters escaped
    (``\\x1b``, ``\\ud800``, ``\\u202e`` stay visible as text), and cut to ``limit``
    characters. For anything a token, a file or a server supplied: claims, error texts, names."""
    shown = redact(str(value))
    if not (shown.isascii() and shown.isprintable()):  # ASCII printable: U+0020 to U+007E
        shown = re.sub(_CONTROL, _escape, shown)
    if limit is not None and len(shown) > limit:
        shown = shown[: max(0, limit - 5)] + "[...]"
    return shown


def redact(value: str) -> str:
    """``value`` with every run that looks like a JWT replaced by ``<a token>``: a last guard
    for text shown to people that a library or a file supplied (log messages, error texts)."""
    return re.sub(_JWT, "<a token>", value) if "eyJ" in value else value


def looks_like_jwt(value: object) -> bool:
    """Whether ``value`` (a path, or any part of it) looks like a JWT rather than a file name."""
    return (
        isinstance(value, str)
        and "eyJ" in value
        and any(re.fullmatch(_JWT, part.strip()) for part in value.split("/"))
    )


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

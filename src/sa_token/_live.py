"""Every open `TokenSource` of the process, and their numbers for the metrics collectors: one
snapshot read per view (`sa_token._tokenfile.FileView`), no I/O, no lock held while reading."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple, Optional

from ._hub import HUB
from ._tokenfile import FileView, TokenFile
from ._validity import stale_for

if TYPE_CHECKING:
    from ._source import TokenSource

__all__ = ["SourceReading", "live_readings", "live_sources"]


def _views() -> list[FileView]:
    with HUB.lock:
        files = [f for f in HUB.files.values() if isinstance(f, TokenFile)]
    return [view for f in files for view in list(f.views.values())]


def live_sources() -> list[TokenSource]:
    """Every open `TokenSource` in the process (no I/O)."""
    return [src for view in _views() for src in list(view.sources)]


class SourceReading(NamedTuple):
    """One open source's numbers, for the metrics collectors: what `TokenSource.status` says,
    as POSIX seconds, without building datetimes or messages (a scrape reads every source)."""

    path: str
    audiences: Optional[tuple[str, ...]]
    expiry: float  # exp; +inf without exp
    rotation_due: float  # the rotation point; +inf without one
    last_read: float  # when the current token was read (clock time)
    stale: bool
    inotify: bool
    reads: int
    failures: int


def live_readings() -> list[SourceReading]:
    """`SourceReading` of every open source: one snapshot read per view, no I/O, no lock held."""
    out = []
    for view in _views():
        snap = view.snap  # one attribute read: a consistent view
        tok = snap.token
        due = tok._rotation_ts
        stale = stale_for(tok, view.now()) is not None
        inotify = view.file.watching  # one watch per file, shared by its sources
        for src in list(view.sources):
            if src._closed:
                continue  # closed since it was listed
            out.append(
                SourceReading(
                    src.path,
                    src.audiences,
                    tok._exp_ts,
                    math.inf if due is None else due,
                    snap.read_at,
                    stale,
                    inotify and src._watch,
                    snap.reads,
                    snap.failures,
                )
            )
    return out

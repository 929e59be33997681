"""What the hub's parts share, at the bottom of the house: the files the hub watches
(`HubFile`), the directories watched for them (`DirWatch`), and the hub as its parts see it
(`HubCore`: the lock, the notes, the deadlines, the poke). `sa_token._hub` builds the hub from
these; `sa_token._inotify`, `_watches` and `_watcher` import only this, never the hub."""

from __future__ import annotations

from typing import Callable, Optional, Protocol

from ._locks import Notes, OwnedLock

__all__ = ["REARM_FIRST", "REARM_MAX", "DirWatch", "HubCore", "HubFile"]

# Retry arming a directory watch that failed (the directory is missing, the watch limit is
# reached) after this long, doubling up to the cap: a volume usually comes back within seconds,
# and a process must not spin on a limit that only an administrator can raise.
REARM_FIRST = 1.0
REARM_MAX = 60.0


class HubFile:
    """What the hub watches: one file, shared by everyone using that path.

    Subclasses implement `refresh` (re-read now; must never raise). ``refs`` and
    ``watch_refs`` (how many users, and how many of them want inotify) belong to the hub and
    change only under its lock."""

    def __init__(self, key: str, path: str) -> None:
        self.key = key
        self.path = path
        self.lock = OwnedLock()
        self.refs = 0
        self.watch_refs = 0
        self.dirs: list[DirWatch] = []

    def refresh(self) -> None:
        raise NotImplementedError

    @property
    def watching(self) -> bool:
        """Whether inotify watches every directory this file needs (else the timer covers it)."""
        dirs = self.dirs
        return bool(dirs) and all(d.wd is not None for d in dirs)

    def after_fork_in_child(self) -> None:
        """In a forked child, at the fork: only cheap, local work (no thread, no descriptor)."""
        self.lock = OwnedLock()


class DirWatch:
    """One directory: its inotify watch (``wd``) and the files interested in its entries."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.wd: Optional[int] = None
        self.names: dict[str, set[HubFile]] = {}
        self.rearm_delay = REARM_FIRST

    def files(self) -> set[HubFile]:
        return {f for fs in self.names.values() for f in fs}


class HubCore(Protocol):
    """The hub as its thread (`sa_token._watcher`) and its watches (`sa_token._watches`) use it."""

    lock: OwnedLock
    notes: Notes  # what to log once the lock is released (`_say`)
    later: list[Callable[[], None]]  # calls queued with `defer`, run by the thread outside every lock
    started: bool

    def _say(self) -> None: ...

    def _poke(self) -> None: ...

    def _schedule(self, delay: float, fire: Callable[[], None], slot: Optional[object] = None) -> None: ...

    def turn(self) -> tuple[Optional[list[Callable[[], None]]], Optional[int], float, float]: ...

    def _on_inotify(self, fd: int) -> None: ...

    def refresh_files(self, files: set[HubFile]) -> None: ...

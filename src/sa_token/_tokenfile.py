"""One token file and its views: every `TokenSource` on a path shares one `TokenFile` (one
watch, one read per rotation), and every source on it with the same settings (audience, issuer,
leeway, refresh interval, clock) shares one `FileView`: one snapshot, one deadline, one set of
warnings. A rotation costs the watcher one read and one snapshot per *view*, however many
sources there are; a source on a file another source just read takes that read.

Sources read ``view.snap`` (one attribute); everything else here runs under the file's lock,
with the views' clocks read before it is taken and their log lines said after it is released.
"""

from __future__ import annotations

import copy  # at the top: an error path must not import (no descriptor left, uid dropped)
import math
import os
import re
import time
import weakref
from collections.abc import Hashable
from typing import Any, Callable, Optional, Union

from . import _clock, _fmt, _log
from ._hub import HUB, HubFile, volume_root
from ._locks import Notes, inside
from ._log import log
from ._read import Identity, identity, load_libc, on_memory_fs, read_token_file
from ._snapshot import Snapshot
from ._token import Token
from ._validity import STALE_MARGIN, Expectations, binding_error, stale_for, time_error, valid_from
from .errors import TokenError, TokenFileError, TokenValidationError

__all__ = ["FAILED_READ_RETRY", "REQUEST_GRACE", "FileView", "TokenFile"]

load_libc()  # now, not at a first read: that read may find no descriptor left to load it with

Clock = Callable[[], float]

# After a failed re-read, retry this soon, not on every token() call: mid-swap failures heal with
# the next event, and this bounds the I/O a failing file causes on the request path.
FAILED_READ_RETRY = 5.0
# The watcher thread re-reads at a snapshot's re-read time; a request reads the file itself only
# once the thread is this late (a GIL hand-off on a busy machine takes milliseconds, not seconds).
# The re-read time is a freshness target, not a validity limit: exp is never exceeded.
REQUEST_GRACE = 1.0
# A read this long after the file's last change sees any later change as a new mtime: file
# times come from the kernel's coarse clock (one jiffy, 10 ms at HZ=100), so an in-place
# rewrite within a jiffy of the previous one may keep the mtime. Below it, a new source reads.
_SETTLED_NS = 50_000_000


class TokenFile(HubFile):
    """One token file: its last read, and its views by settings."""

    def __init__(self, path: str) -> None:
        super().__init__(key=path, path=path)
        self.generation = 0
        self.views: dict[Hashable, FileView] = {}
        # Every projected volume is tmpfs: there the watcher reads without releasing the GIL.
        self.hold_gil = on_memory_fs(path)
        self.identity: Optional[Identity] = None  # the file as last read: (inode, size, mtime)
        self.last: Union[Token, TokenError, None] = None  # what the last read gave
        self.read_ns = 0  # when (CLOCK_REALTIME, never patched by freezegun)
        self.in_subpath: Optional[bool] = None  # `subpath_mount`, once known

    def refresh(self, seen: Optional[int] = None) -> None:
        """Re-read and hand the result to each view. With ``seen``, skip if the file was read
        since that generation (another thread did it: single flight). A thread that holds the
        lock already (a finalizer the garbage collector ran inside a read) does not read again."""
        if inside():  # a finalizer inside our own locked work: no lock may be waited for here
            return
        nows = [(view, view.now()) for view in list(self.views.values())]  # clocks: not under the lock
        notes = Notes()
        with self.lock:
            if seen is not None and seen != self.generation:
                return
            rotated, late = self._dispatch(self._read(), nows, notes)
        notes.say()
        for tok, listeners in rotated:
            for src in listeners:
                src._subscribers.notify(tok)
        if late:
            HUB.defer(self.refresh)

    def _dispatch(
        self, result: Union[Token, TokenError], nows: list[tuple[FileView, float]], notes: Notes
    ) -> tuple[list[tuple[Token, list[Any]]], bool]:
        """Under the lock: hand a read to each view. Returns the rotations (the new token and
        the sources to tell), and whether a view made after the clocks were read missed it."""
        rotated = []
        for view, now in nows:
            tok = view.accept(result, self.generation, now, notes)
            if tok is not None:
                rotated.append((tok, list(view.listening)))
        late = not set(self.views.values()) <= {view for view, _ in nows}  # it took the previous read
        for key in [k for k, v in self.views.items() if v.vacant()]:
            del self.views[key]  # no source left (its deadline went with the last one)
        return rotated, late

    def _read(self) -> Union[Token, TokenError]:
        found: list[Identity] = []
        try:
            result: Union[Token, TokenError] = read_token_file(self.path, hold_gil=self.hold_gil, seen=found)
        except TokenError as exc:
            result = exc
        except Exception as exc:  # a bug: still a failed read, never a stuck source
            result = TokenFileError(
                f"token file {_fmt.path(self.path)} could not be read ({type(exc).__name__})", path=self.path
            )
        self.identity = found[-1] if found else None
        self.last, self.read_ns = result, time.clock_gettime_ns(time.CLOCK_REALTIME)
        self.generation += 1
        return result

    def settled(self) -> bool:
        """Whether the last read still describes the file (one ``stat``, no lock, no read): the
        same file, unchanged since, and read long enough after its last change to tell."""
        ident = self.identity
        return (
            isinstance(self.last, Token)
            and ident is not None
            and identity(self.path) == ident
            and self.read_ns - ident[2] > _SETTLED_NS
        )

    def changed(self) -> bool:
        """Whether the file is not the one last read (one ``stat``; no lock, no read)."""
        return identity(self.path) != self.identity

    def join(
        self, src: Any, key: Hashable, make: Callable[[], FileView], now: float
    ) -> tuple[FileView, Token]:
        """Add ``src`` to the view for ``key`` (made by ``make`` if new) and return it with the
        file's current token; raises the read's error, or the binding error for the view's
        expectations. The file is read only if the last read does not describe it any more."""
        if not self.settled():
            self.refresh()
        with self.lock:
            first = self.last
            if not isinstance(first, Token):  # the read failed: say why (a fresh copy: no traceback)
                raise copy_error(first) if first is not None else TokenFileError(
                    f"token file {_fmt.path(self.path)} could not be read", path=self.path
                )
            view = self.views.get(key)
            made = view is None
            if view is None:
                view = make()
            problem = binding_error(first, view.expect, self.path)
            if problem is not None:
                raise problem
            view.sources.add(src)
            vacant = HUB.occupy(view)  # first: the hub plans nothing for a view nobody uses
            if made:
                self.views[key] = view
                view.snap = view.publish(first, now, self.generation, 1, 0)
            elif vacant:  # its deadline was cancelled when its last source left
                view.schedule(view.snap.refresh_at, now)
            return view, first

    def subpath_mount(self) -> bool:
        """Whether the file is a ``subPath`` mount (never updated by the kubelet): outside any
        projected volume and a mount point itself. Looked at once per file."""
        if self.in_subpath is None:
            self.in_subpath = volume_root(self.path) is None and _is_mount_point(self.path)
        return self.in_subpath

    def warn_at_start(self, first: Token, now: float, leeway: float) -> None:
        """What a new source says of its first token: unusable now, or never to be rotated."""
        problem = time_error(first, now, leeway, self.path)
        if problem is not None:
            log.warning("sa-token: %s", problem)
        if self.subpath_mount():
            exp = first._exp_ts
            log.warning(
                "sa-token: token file %s is a subPath mount: the kubelet never updates it, so this "
                "token will not rotate%s; mount the projected volume's directory instead",
                _fmt.path(self.path),
                f" and stops working at {_fmt.iso(exp)}" if math.isfinite(exp) else "",
            )

    def after_fork_in_child(self) -> None:
        """At the fork: fresh locks, and every view's snapshot made due, so that the child's
        first use re-reads the file (and starts the watcher: `Hub.ensure_running`)."""
        super().after_fork_in_child()
        for view in list(self.views.values()):
            for src in list(view.listening):
                src._subscribers.after_fork_in_child()
            view.snap = view.snap._replace(refresh_at=-math.inf, serve_until=-math.inf)


class FileView:
    """The sources of one file that share their settings: one snapshot (``snap``, what
    `TokenSource.token` reads), one planned re-read (the view is its own slot in the hub's
    deadline heap, and the callable it fires), one set of warnings."""

    __slots__ = ("__weakref__", "clock", "expect", "file", "listening", "refresh_interval", "snap",
                 "sources", "stale_warned", "users", "warned")

    def __init__(
        self, file: TokenFile, expect: Expectations, refresh_interval: float, clock: Optional[Clock]
    ) -> None:
        self.file = file
        self.expect = expect
        self.refresh_interval = refresh_interval
        self.clock = clock
        self.snap: Snapshot  # set by TokenFile.join, under the lock
        self.sources: weakref.WeakSet[Any] = weakref.WeakSet()  # the open sources (the registry)
        self.users = 0  # sources joined and not released: guarded by the hub's lock (`Hub.occupy`)
        self.listening: weakref.WeakSet[Any] = weakref.WeakSet()  # those with subscribers
        self.warned: set[str] = set()  # reasons already warned about since the last good read
        self.stale_warned: Optional[int] = None  # hash of the token last warned stale

    def now(self) -> float:
        return _clock.now(self.clock)

    def vacant(self) -> bool:
        """No source uses the view (the hub cancelled its deadline)."""
        return self.users == 0

    def __call__(self) -> None:
        """The deadline: re-read, unless another read came first (or nobody is left)."""
        if self.users:
            self.file.refresh(seen=self.snap.generation)

    def checked(self, now: float) -> Token:
        """The slow path of `TokenSource.token`: re-read if due (single flight), then serve or
        raise."""
        snap, tfile, leeway = self.snap, self.file, self.expect.leeway
        if now >= snap.refresh_at:
            HUB.ensure_running()
            tfile.refresh(seen=snap.generation)
            snap, now = self.snap, self.now()
        problem = time_error(snap.token, now, leeway, tfile.path)
        if problem is not None and snap.refresh_at > now and tfile.changed():
            # No valid token to hand out, and the file is not the one last read (one stat): the
            # kubelet may have rotated it since (watch=False, a missed event). Read it before
            # raising; a file that keeps failing is still read at most once per retry delay.
            tfile.refresh(seen=snap.generation)
            snap, now = self.snap, self.now()
            problem = time_error(snap.token, now, leeway, tfile.path)
        if problem is not None:
            err = snap.error
            if err is not None and not isinstance(err, TokenValidationError):
                problem.message += f"; the last re-read failed: {err}"  # a file error, not another expiry
            raise problem
        return snap.token

    def listen(self, source: Any) -> None:
        """``source`` has subscribers: the view notifies it of rotations (unless it closed)."""
        with self.file.lock:
            if not source.closed:
                self.listening.add(source)

    def leave(self, source: Any) -> None:
        """``source`` closed (under the file's lock)."""
        self.sources.discard(source)
        self.listening.discard(source)

    def forget(self, rule: Callable[[Snapshot], bool]) -> bool:
        """Make the next `TokenSource.token` re-read if ``rule(snap)`` (under the file's lock, or
        from a finalizer inside our own work): `TokenSource.invalidate` and ``invalidate_if``."""
        snap = self.snap
        if not rule(snap):
            return False
        self.snap = snap._replace(refresh_at=-math.inf, serve_until=-math.inf)
        return True

    def schedule(self, refresh_at: float, now: float) -> None:
        """Have the watcher thread re-read at ``refresh_at`` (replacing the planned re-read)."""
        HUB.schedule(refresh_at - now, self, slot=self)

    def accept(
        self, result: Union[Token, TokenError], generation: int, now: float, notes: Notes
    ) -> Optional[Token]:
        """Apply a read's result (under the file's lock; ``now`` was read before it, and what to
        log goes to ``notes``). Returns the new token on a rotation."""
        snap = self.snap
        leeway, path = self.expect.leeway, self.file.path
        if isinstance(result, Token):
            problem = binding_error(result, self.expect, path)
            if problem is None and result.value != snap.value:
                # Keep a valid token over a new one that cannot be used now.
                worse = time_error(result, now, leeway, path)
                if worse is not None and time_error(snap.token, now, leeway, path) is None:
                    problem = worse
            if problem is None:
                self.warned.clear()
                self.snap = self.publish(result, now, generation, snap.reads + 1, snap.failures)
                if result.value == snap.value:
                    self._warn_if_stale(result, now, notes)
                    return None
                return result
            result = problem
        self._warn_failure(result, snap.token, now, notes)
        retry = now + FAILED_READ_RETRY
        # Retry soon after a failure; keep an earlier re-read that was already planned.
        refresh_at = snap.refresh_at if now < snap.refresh_at < retry else retry
        self.snap = snap._replace(
            refresh_at=refresh_at,
            serve_until=min(refresh_at + REQUEST_GRACE, snap.token._exp_ts),
            error=result,
            generation=generation,
            failures=snap.failures + 1,
        )
        self.schedule(refresh_at, now)
        return None

    def publish(self, tok: Token, now: float, generation: int, reads: int, failures: int) -> Snapshot:
        """The snapshot serving ``tok`` from ``now``, its re-read planned."""
        exp = tok._exp_ts
        refresh_at = now + self.refresh_interval
        rp = tok._rotation_ts
        if rp is not None:  # read again at the rotation point, and once more after the kubelet's margin
            if now < rp:
                refresh_at = min(refresh_at, rp)
            elif now < rp + STALE_MARGIN:
                refresh_at = min(refresh_at, rp + STALE_MARGIN)
        # Read again at expiry (the kubelet may have caught up); an expired token, soon.
        refresh_at = min(refresh_at, exp) if now < exp else now + FAILED_READ_RETRY
        self.schedule(refresh_at, now)
        return Snapshot(
            token=tok,
            value=tok.value,
            read_at=now,
            refresh_at=refresh_at,
            serve_from=valid_from(tok, self.expect.leeway),
            serve_until=min(refresh_at + REQUEST_GRACE, exp),
            error=None,
            generation=generation,
            reads=reads,
            failures=failures,
        )

    def _warn_failure(self, err: TokenError, current: Token, now: float, notes: Notes) -> None:
        # One warning per cause: the reason code, not the message (messages hold relative times).
        if err.reason in self.warned:
            return
        self.warned.add(err.reason)
        left = current._exp_ts - now
        keep = "keeping the current token" + (
            f" (valid for another {_fmt.duration(left)})" if math.isfinite(left) and left > 0 else ""
        )
        notes.add(_log.WARNING, "sa-token: re-read failed: %s; %s", err, keep)

    def _warn_if_stale(self, tok: Token, now: float, notes: Notes) -> None:
        late = stale_for(tok, now)
        fingerprint = hash(tok.value)
        if late is None or self.stale_warned == fingerprint:
            return
        self.stale_warned = fingerprint
        exp = tok._exp_ts
        notes.add(
            _log.WARNING,
            "sa-token: token at %s passed its rotation point (%s) and was not rotated: the kubelet is "
            "not rotating it (see kubernetes issue 138689); it expires at %s",
            _fmt.path(self.file.path),
            _fmt.iso(tok._rotation_ts),
            _fmt.iso(exp) if math.isfinite(exp) else "never",
        )


def copy_error(err: TokenError) -> TokenError:
    """A fresh instance of a stored error (raising the stored one would grow its traceback)."""
    return copy.copy(err)  # through TokenError.__reduce__: no traceback, no context


def _is_mount_point(path: str) -> bool:
    """Whether ``path`` is itself a mount point (a file bind-mounted by a ``subPath``)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            # field 5 is the mount point; spaces, tabs, newlines and backslashes are octal escapes
            points = {_OCTAL.sub(lambda m: chr(int(m[1], 8)), line.split(" ")[4]) for line in f}
    except (OSError, IndexError):
        return False
    return path in points or os.path.realpath(path) in points


_OCTAL = re.compile(r"\\([0-7]{3})")

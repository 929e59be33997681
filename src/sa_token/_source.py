"""`TokenSource`: always hand out the current, valid projected ServiceAccount token.

Each source holds one immutable `_Snapshot`: the last good token, when it was read, when to read
the file again, the window in which it may be served (from ``nbf``/``iat`` less the leeway until
the earlier of ``exp`` and the next re-read, plus a second's grace for the watcher thread to do
it) and the last read error. The snapshot is replaced
as a whole, only under the file's lock; readers take it with one attribute read.

`TokenSource.token` reads the clock once and compares it with the snapshot's window: inside it,
it returns the token; past it, it re-reads the file (one thread reads, the others wait for it)
and checks again, or raises. So no background thread is needed for correctness: the process-wide
watcher thread (`sa_token._hub`) only makes pickups early, re-reading on the kubelet's
``..data`` swap and at each deadline. See docs/model.md for the whole picture.
"""

from __future__ import annotations

import copy
import math
import os
import re
import time
import weakref
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, Callable, NamedTuple, Optional, TypeVar, Union

from . import _clock, _fmt, _log
from ._hub import HUB, HubFile, volume_root
from ._locks import Notes, inside
from ._log import log
from ._read import Identity, identity, on_memory_fs, read_token_file
from ._subscribers import Subscribers
from ._token import Token
from ._validity import (
    DEFAULT_LEEWAY,
    STALE_MARGIN,
    Expectations,
    binding_error,
    stale_for,
    time_error,
    valid_from,
)
from .errors import TokenError, TokenFileError, TokenValidationError

__all__ = [
    "DEFAULT_LEEWAY",
    "DEFAULT_TOKEN_PATH",
    "STALE_MARGIN",
    "SourceReading",
    "TokenSource",
    "TokenStatus",
    "live_readings",
    "live_sources",
    "require_source",
]


# Where the kubelet mounts the default kube-api-access volume (DefaultAPITokenMountPath).
DEFAULT_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"
# Fallback re-read period: the platform docs ask apps to reload the token at least every 5 minutes.
DEFAULT_REFRESH_INTERVAL = 300.0
# After a failed re-read, retry this soon, not on every token() call: mid-swap failures heal with
# the next event, and this bounds the I/O a failing file causes on the request path.
FAILED_READ_RETRY = 5.0
# The watcher thread re-reads at a snapshot's re-read time; a request reads the file itself only
# once the thread is this late (a GIL hand-off on a busy machine takes milliseconds, not seconds).
# The re-read time is a freshness target, not a validity limit: exp is never exceeded.
REQUEST_GRACE = 1.0

Clock = Callable[[], float]
T = TypeVar("T")
Subscriber = Callable[[Token], None]


class _Snapshot:
    """What readers of one source share. Replaced whole, under the file's lock; never changed
    (`_replace` makes a new one). Not a tuple: error reporters that walk the containers in a
    frame's locals must not find the token in it (`tests/test_no_token_in_frames.py`)."""

    __slots__ = (
        "error", "failures", "generation", "read_at", "reads", "refresh_at", "serve_from", "serve_until",
        "token", "value",
    )
    token: Token
    value: str  # token.value, one attribute read closer for token(); never in the repr
    read_at: float  # when ``token`` was read (clock time)
    refresh_at: float  # when to read the file again
    serve_from: float  # nbf/iat less the leeway
    serve_until: float  # min(refresh_at + REQUEST_GRACE, exp); -inf once invalidated or closed
    error: Optional[TokenError]  # the last read's error; None when it succeeded
    generation: int  # the file read this snapshot reflects (single flight)
    reads: int  # successful reads so far
    failures: int  # failed reads so far

    def __init__(self, **fields: Any) -> None:
        for name in self.__slots__:
            setattr(self, name, fields[name])

    def _replace(self, **changes: Any) -> _Snapshot:
        new = object.__new__(_Snapshot)
        for name in self.__slots__:
            setattr(new, name, changes[name] if name in changes else getattr(self, name))
        return new

    def __repr__(self) -> str:
        return f"_Snapshot({self.token!r}, read_at={self.read_at}, generation={self.generation})"


class TokenStatus:
    """A source's state, as `TokenSource.status` reports it (no I/O, no token)."""

    path: str
    """The token file."""
    audiences: Optional[tuple[str, ...]]
    """The audiences the source requires (``None``: any)."""
    valid: bool
    """Whether the current token may be used now (unexpired, already valid, source open)."""
    reason: Optional[str]
    """Why not: ``"expired"``, ``"not-yet-valid"`` or ``"closed"``; ``None`` when valid."""
    expires_at: Optional[datetime]
    """The current token's ``exp``."""
    rotation_due_at: Optional[datetime]
    """When the kubelet should replace it (80% of its lifetime)."""
    stale: bool
    """The rotation point passed (with the kubelet's margin) and the file still holds this token."""
    last_read_at: Optional[datetime]
    """When the current token was last read successfully."""
    last_error: Optional[str]
    """The last read's error message (never the token), ``None`` when the last read succeeded."""
    watching: str
    """``"inotify"``, ``"timer"`` (inotify unavailable or off) or ``"closed"``."""
    reads: int
    """Successful reads of the file by this source."""
    failures: int
    """Failed reads."""

    # A plain class, not a dataclass (`dataclasses` imports `inspect`, a sixth of `import
    # sa_token`): keyword construction, frozen, equal by its fields, a dataclass-like repr.
    _FIELDS = (
        "path", "audiences", "valid", "reason", "expires_at", "rotation_due_at", "stale",
        "last_read_at", "last_error", "watching", "reads", "failures",
    )

    def __init__(self, **fields: Any) -> None:
        missing = set(self._FIELDS) - set(fields)
        extra = set(fields) - set(self._FIELDS)
        if missing or extra:
            raise TypeError(f"TokenStatus() needs exactly {self._FIELDS}: missing {sorted(missing)}, "
                            f"unexpected {sorted(extra)}")
        for name in self._FIELDS:
            object.__setattr__(self, name, fields[name])

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: a TokenStatus is immutable")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._FIELDS)

    def __eq__(self, other: object) -> bool:
        if type(other) is not TokenStatus:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return f"TokenStatus({', '.join(f'{n}={getattr(self, n)!r}' for n in self._FIELDS)})"


class _TokenFile(HubFile):
    """One token file, shared by every `TokenSource` on that path: one watch, one read per
    rotation, each source applying its own expectations to the result."""

    def __init__(self, path: str) -> None:
        super().__init__(key=path, path=path)
        self.generation = 0
        self.sources: weakref.WeakSet[TokenSource] = weakref.WeakSet()
        # Every projected volume is tmpfs: there the watcher reads without releasing the GIL.
        self.hold_gil = on_memory_fs(path)
        self.identity: Optional[Identity] = None  # the file as last read: (inode, size, mtime)

    def refresh(self, seen: Optional[int] = None) -> None:
        """Re-read and hand the result to each source. With ``seen``, skip if the file was read
        since that generation (another thread did it: single flight).

        The sources' clocks are read before the lock is taken and their log lines said after it
        is released: no injected clock or logging handler runs under it. A thread that holds the
        lock already (a finalizer the garbage collector ran inside a read) does not read again."""
        if inside():  # a finalizer inside our own locked work: no lock may be waited for here
            return
        sources = list(self.sources)
        nows = {src: src._now() for src in sources}
        rotated: list[tuple[TokenSource, Token]] = []
        notes = Notes()
        with self.lock:
            if seen is not None and seen != self.generation:
                return
            found: list[Identity] = []
            result = _read(self.path, self.hold_gil, found)
            self.identity = found[-1] if found else None
            self.generation += 1
            for src in list(self.sources):
                now = nows.get(src)
                if now is None:  # registered after the clocks were read: it read the file itself
                    continue
                tok = src._accept(result, self.generation, now, notes)
                if tok is not None:
                    rotated.append((src, tok))
        notes.say()
        for src, tok in rotated:
            src._subscribers.notify(tok)

    def changed(self) -> bool:
        """Whether the file is not the one last read (one ``stat``; no lock, no read)."""
        return identity(self.path) != self.identity

    def after_fork_in_child(self) -> None:
        """At the fork: fresh locks, and every source's snapshot made due, so that the child's
        first use re-reads the file (and starts the watcher: `Hub.ensure_running`)."""
        super().after_fork_in_child()
        for src in list(self.sources):
            src._subscribers.after_fork_in_child()
            if not src._closed:
                src._snap = src._snap._replace(refresh_at=-math.inf, serve_until=-math.inf)


def _token_files() -> list[_TokenFile]:
    with HUB.lock:
        return [f for f in HUB.files.values() if isinstance(f, _TokenFile)]


def live_sources() -> list[TokenSource]:
    """Every open `TokenSource` in the process (no I/O)."""
    return [src for f in _token_files() for src in list(f.sources)]


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
    """`SourceReading` of every open source: one snapshot read each, no I/O, no lock held."""
    out = []
    for f in _token_files():
        inotify = f.watching  # one watch per file, shared by its sources
        for src in list(f.sources):
            snap = src._snap  # one attribute read: a consistent view
            if src._closed:
                continue  # closed since it was listed
            tok = snap.token
            due = tok._rotation_ts
            out.append(
                SourceReading(
                    src.path,
                    src.audiences,
                    tok._exp_ts,
                    math.inf if due is None else due,
                    snap.read_at,
                    stale_for(tok, src._now()) is not None,
                    inotify and src._watch,
                    snap.reads,
                    snap.failures,
                )
            )
    return out


def _read(path: str, hold_gil: bool, found: list[Identity]) -> Union[Token, TokenError]:
    try:
        return read_token_file(path, hold_gil=hold_gil, seen=found)
    except TokenError as exc:
        return exc
    except Exception as exc:  # a bug: still a failed read, never a stuck source
        return TokenFileError(
            f"token file {_fmt.path(path)} could not be read ({type(exc).__name__})", path=path
        )


class TokenSource:
    """The current, valid token from a projected ServiceAccount token file.

    ```python
    src = TokenSource("/var/run/secrets/tokens/vault", audience="vault")
    requests.get(url, headers={"Authorization": f"Bearer {src.token()}"})
    ```

    The constructor reads the file: a wrong path, an unreadable or malformed file, or a token
    for another audience or issuer raises there (see `sa_token.errors`). Afterwards the token
    is re-read when the kubelet rotates it (inotify on the volume directory), every
    ``refresh_interval`` seconds and at the kubelet's rotation point, in the background; and
    `token` re-reads it itself whenever the background is late.

    Args:
        path: The token file (default: the kube-api-access volume's token).
        audience: The audience (or audiences, any one suffices) the token must carry.
        issuer: The exact ``iss`` the token must carry.
        refresh_interval: The fallback re-read period in seconds (default 300).
        watch: Use inotify (default True); False leaves the timer alone.
        leeway: Seconds of clock skew allowed for ``nbf``/``iat`` (default 60). ``exp`` gets
            none: the kubelet rotates long before it.
        clock: A `time.time`-like function, for tests. By default the clock is `time.time`,
            looked up at each call (freezegun works).

    Thread-safe and fork-safe (sources keep rotating in a forked child). Use it as a context
    manager or call `close` to stop watching.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike[str]] = DEFAULT_TOKEN_PATH,
        *,
        audience: Union[str, Iterable[str], None] = None,
        issuer: Optional[str] = None,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        watch: bool = True,
        leeway: float = DEFAULT_LEEWAY,
        clock: Optional[Clock] = None,
    ) -> None:
        if not (isinstance(refresh_interval, (int, float)) and 0 < refresh_interval < math.inf):
            raise ValueError(
                f"refresh_interval must be a positive number of seconds, got {refresh_interval!r}"
            )
        if not (isinstance(leeway, (int, float)) and 0 <= leeway < math.inf):
            raise ValueError(f"leeway must be a non-negative number of seconds, got {leeway!r}")
        if audience is None:
            audiences: Optional[tuple[str, ...]] = None
        elif isinstance(audience, str):
            audiences = (audience,)
        else:
            audiences = tuple(audience)
            if not audiences or not all(isinstance(a, str) for a in audiences):
                raise ValueError("audience must be a string or a non-empty iterable of strings")
        self.path = os.path.abspath(os.fspath(path))
        self.audiences = audiences
        self.issuer = issuer
        self.refresh_interval = float(refresh_interval)
        self.leeway = float(leeway)
        self._expect = Expectations(audiences, issuer, float(leeway))
        self._clock = clock
        self._watch = bool(watch)
        self._subscribers: Subscribers[Token] = Subscribers(self.path)
        self._closed = False
        # Bookkeeping for log lines and the timer, written only under the file's lock:
        self._warned: set[str] = set()  # reasons already warned about since the last good read
        self._stale_warned: Optional[int] = None  # hash of the token last warned stale
        # This source's planned re-read: one object, also its slot in the hub's deadline heap.
        self._deadline = _Deadline(weakref.ref(self))

        # Register (and arm the watch) before the first read: a rotation after this point
        # raises an event. One registry operation; undone below if the read fails.
        tfile = HUB.acquire(self.path, lambda: _TokenFile(self.path), watch=self._watch)
        try:
            if inside():
                raise RuntimeError(
                    f"sa-token: a TokenSource for {_fmt.path(self.path)} cannot be created while this "
                    "thread is reading that file (from a finalizer the garbage collector ran there): "
                    "create it outside __del__"
                )
            now = self._now()  # before the lock: an injected clock never runs under it
            with tfile.lock:
                found: list[Identity] = []
                first = read_token_file(self.path, hold_gil=tfile.hold_gil, seen=found)
                problem = binding_error(first, self._expect, self.path)
                if problem is not None:
                    raise problem
                tfile.identity = found[-1] if found else None
                self._file = tfile
                self._snap = self._publish(first, now, tfile.generation, 1, 0)
                tfile.sources.add(self)
        except BaseException:
            HUB.release(tfile, watch=self._watch)
            raise
        # A source dropped without close() releases its registration, and its deadline, from the
        # hub's thread.
        self._finalizer = weakref.finalize(self, HUB.release_later, tfile, self._watch, self._deadline)
        self._finalizer.atexit = False
        problem = time_error(first, now, self.leeway, self.path)
        if problem is not None:
            log.warning("sa-token: %s", problem)
        if volume_root(self.path) is None and _is_mount_point(self.path):
            exp = first._exp_ts
            log.warning(
                "sa-token: token file %s is a subPath mount: the kubelet never updates it, so this "
                "token will not rotate%s; mount the projected volume's directory instead",
                _fmt.path(self.path),
                f" and stops working at {_fmt.iso(exp)}" if math.isfinite(exp) else "",
            )

    # ------------------------------------------------------------------ public API -------
    def token(self) -> str:
        """The current token string. O(1) and free of I/O unless a deadline passed (the
        rotation point, the refresh interval), in which case the file is re-read first.

        Raises `TokenExpiredError` (or `TokenNotYetValidError`) rather than return a token
        known to be unusable, and `RuntimeError` once the source is closed.
        """
        snap = self._snap
        # _clock.now(self._clock), inlined on the hot path: time.time looked up at each call, as
        # documented, so monkeypatch and freezegun reach it (bench/bench_hot_path.py: ~5 ns).
        now = time.time() if self._clock is None else self._clock()
        if snap.serve_from <= now < snap.serve_until:
            return snap.value
        return self._checked(now).value

    __call__ = token  # a TokenSource is a Callable[[], str] token provider

    def current(self) -> Token:
        """The parsed current token, checked like `token`. After `close` it is the last token
        read, still checked for expiry (the file is not read again)."""
        snap = self._snap
        now = self._now()
        if snap.serve_from <= now < snap.serve_until:
            return snap.token
        if self._closed:
            problem = time_error(snap.token, now, self.leeway, self.path)
            if problem is not None:
                raise problem
            return snap.token
        return self._checked(now)

    def token_nowait(self) -> Optional[str]:
        """The token if it can be answered without I/O, else ``None`` (then call `token` from a
        worker thread). For async code that must not block its event loop."""
        snap = self._snap
        now = self._now()
        if snap.serve_from <= now < snap.serve_until:
            return snap.value
        return None

    async def atoken(self) -> str:
        """`token` for asyncio: any file read runs in a worker thread."""
        snap = self._snap
        now = self._now()
        if snap.serve_from <= now < snap.serve_until:
            return snap.value
        import asyncio  # here, not at the top: most users never need it, and it is slow to import

        return await asyncio.get_running_loop().run_in_executor(None, self.token)

    def reload(self) -> Token:
        """Re-read the file now. If that read fails, raise its error (the source keeps serving
        the last good token); otherwise return the current token, checked like `token`."""
        self._ensure_open()
        self._file.refresh()  # skipped by a thread inside a read of this file already (a finalizer)
        err = self._snap.error
        if err is not None:
            raise _copy_error(err)
        return self.current()

    def invalidate(self, older_than: Union[float, datetime, None] = None) -> None:
        """Forget the token if it was read before ``older_than`` (a POSIX timestamp or an aware
        datetime; ``None``: unconditionally), so that the next `token` re-reads the file.

        This is client-go's ``ResetTokenOlderThan``: after a 401, invalidate tokens read before
        the request started; concurrent 401s then cause one re-read. ``older_than`` is in the
        source's ``clock=`` time (wall-clock time without one); `invalidate_if` needs no clock.
        Unlike client-go the old token is kept as a fallback in case the re-read fails.
        """
        cutoff = math.inf if older_than is None else _timestamp(older_than)
        if inside():  # from a finalizer inside our own work: an attribute store, no lock
            self._invalidate(cutoff)
            return
        with self._file.lock:
            self._invalidate(cutoff)

    def invalidate_if(self, sent: Token) -> bool:
        """Forget the token if it is still ``sent`` (the `Token` a request carried and a server
        rejected), so that the next `token` re-reads the file; returns whether it did. A
        compare-and-swap: once anything re-read the file, ``sent`` is no longer current and
        nothing happens, so a burst of 401s for one token causes one re-read. No timestamps: it
        works whatever ``clock=`` says. What every integration calls after a rejection."""
        if inside():  # from a finalizer inside our own work: an attribute store, no lock
            return self._invalidate_if(sent)
        with self._file.lock:
            return self._invalidate_if(sent)

    def _invalidate_if(self, sent: Token) -> bool:
        snap = self._snap
        if snap.token is not sent or self._closed:
            return False
        self._snap = snap._replace(refresh_at=-math.inf, serve_until=-math.inf)
        return True

    def _current_nowait(self) -> Optional[Token]:
        """The parsed token if it can be handed out without I/O, else ``None``."""
        snap = self._snap
        now = self._now()
        if snap.serve_from <= now < snap.serve_until:
            return snap.token
        return None

    def _invalidate(self, cutoff: float) -> None:
        snap = self._snap
        if snap.read_at < cutoff and not self._closed:
            self._snap = snap._replace(refresh_at=-math.inf, serve_until=-math.inf)

    @property
    def read_at(self) -> float:
        """When the current token was last read from the file (``clock`` time)."""
        return self._snap.read_at

    @property
    def watching(self) -> bool:
        """Whether inotify watches the file (else only the timer re-reads it)."""
        return not self._closed and self._watch and self._file.watching

    def status(self) -> TokenStatus:
        """The source's state now: no I/O, no token. See `TokenStatus`."""
        snap = self._snap
        now = self._now()
        tok = snap.token
        problem: Optional[str] = "closed" if self._closed else None
        if problem is None:
            err = time_error(tok, now, self.leeway, self.path)
            problem = None if err is None else err.reason
        return TokenStatus(
            path=self.path,
            audiences=self.audiences,
            valid=problem is None,
            reason=problem,
            expires_at=tok.expires_at,
            rotation_due_at=tok.rotation_due_at,
            stale=stale_for(tok, now) is not None,
            last_read_at=_utc(snap.read_at),
            last_error=None if snap.error is None else str(snap.error),
            watching="closed" if self._closed else ("inotify" if self.watching else "timer"),
            reads=snap.reads,
            failures=snap.failures,
        )

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(token)`` after each rotation (a new, valid token was read). Returns a
        function that unsubscribes. Callbacks run in a thread of this source's own, in order,
        never on the watcher thread: a slow callback delays only this source's next callbacks.
        What they raise is logged."""
        return self._subscribers.add(callback)

    def close(self) -> None:
        """Stop watching and re-reading. Idempotent. The last token stays readable through
        `current` (while it is valid); `token` and `reload` raise `RuntimeError`.

        Safe from a finalizer (``__del__``): when the garbage collector runs it inside sa-token's
        own locked work on this thread, the source is closed at once and its registration is
        released by the watcher thread, instead of this thread waiting for itself."""
        if inside():
            if not self._closed:
                self._closed = True
                self._snap = self._snap._replace(serve_until=-math.inf, refresh_at=math.inf)
                HUB.defer(self._finish_close)
            return
        self._finish_close()

    def _finish_close(self) -> None:
        with self._file.lock:
            self._closed = True
            self._snap = self._snap._replace(serve_until=-math.inf, refresh_at=math.inf)
            self._file.sources.discard(self)
        if self._finalizer.detach() is not None:  # once: a second close() finds it detached
            HUB.release(self._file, watch=self._watch, slot=self._deadline)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> TokenSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        snap: Optional[_Snapshot] = getattr(self, "_snap", None)  # None while __init__ reads
        exp = None if snap is None else snap.token.expires_at
        mode = "closed" if self._closed else ("inotify" if snap and self.watching else "timer")
        aud = list(self.audiences) if self.audiences else None
        return (
            f"TokenSource(path={self.path!r}, audience={aud!r}, mode={mode}, "
            f"expires_at={exp.isoformat() if exp else None!r})"
        )

    # ------------------------------------------------------------------ internals --------
    def _now(self) -> float:
        return _clock.now(self._clock)

    def _ensure_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"TokenSource for {_fmt.path(self.path)} is closed")

    def _checked(self, now: float) -> Token:
        """The slow path: re-read if due (single flight), then serve or raise."""
        self._ensure_open()
        snap = self._snap
        if now >= snap.refresh_at:
            HUB.ensure_running()
            self._file.refresh(seen=snap.generation)
            snap = self._snap
            now = self._now()
        problem = time_error(snap.token, now, self.leeway, self.path)
        if problem is not None and snap.refresh_at > now and self._file.changed():
            # No valid token to hand out, and the file is not the one last read (one stat): the
            # kubelet may have rotated it since (watch=False, a missed event). Read it before
            # raising; a file that keeps failing is still read at most once per retry delay.
            self._file.refresh(seen=snap.generation)
            snap = self._snap
            now = self._now()
            problem = time_error(snap.token, now, self.leeway, self.path)
        if problem is not None:
            err = snap.error
            if err is not None and not isinstance(err, TokenValidationError):
                problem.message += f"; the last re-read failed: {err}"  # a file error, not another expiry
            raise problem
        return snap.token

    def _accept(
        self, result: Union[Token, TokenError], generation: int, now: float, notes: Notes
    ) -> Optional[Token]:
        """Apply a read's result (under the file's lock; ``now`` was read before it, and what
        to log goes to ``notes``). Returns the new token on a rotation."""
        if self._closed:
            return None
        snap = self._snap
        if isinstance(result, Token):
            problem = binding_error(result, self._expect, self.path)
            if problem is None and result.value != snap.value:
                # Keep a valid token over a new one that cannot be used now.
                worse = time_error(result, now, self.leeway, self.path)
                if worse is not None and time_error(snap.token, now, self.leeway, self.path) is None:
                    problem = worse
            if problem is None:
                self._warned.clear()
                self._snap = self._publish(result, now, generation, snap.reads + 1, snap.failures)
                if result.value == snap.value:
                    self._warn_if_stale(result, now, notes)
                    return None
                return result
            result = problem
        self._warn_failure(result, snap.token, now, notes)
        retry = now + FAILED_READ_RETRY
        # Retry soon after a failure; keep an earlier re-read that was already planned.
        refresh_at = snap.refresh_at if now < snap.refresh_at < retry else retry
        self._snap = snap._replace(
            refresh_at=refresh_at,
            serve_until=min(refresh_at + REQUEST_GRACE, snap.token._exp_ts),
            error=result,
            generation=generation,
            failures=snap.failures + 1,
        )
        self._schedule(refresh_at, now)
        return None

    def _publish(self, tok: Token, now: float, generation: int, reads: int, failures: int) -> _Snapshot:
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
        self._schedule(refresh_at, now)
        return _Snapshot(
            token=tok,
            value=tok.value,
            read_at=now,
            refresh_at=refresh_at,
            serve_from=valid_from(tok, self.leeway),
            serve_until=min(refresh_at + REQUEST_GRACE, exp),
            error=None,
            generation=generation,
            reads=reads,
            failures=failures,
        )

    def _schedule(self, refresh_at: float, now: float) -> None:
        """Have the watcher thread re-read at ``refresh_at`` (replacing the planned re-read)."""
        HUB.schedule(refresh_at - now, self._deadline, slot=self._deadline)

    def _warn_failure(self, err: TokenError, current: Token, now: float, notes: Notes) -> None:
        # One warning per cause: the reason code, not the message (messages hold relative times).
        if err.reason in self._warned:
            return
        self._warned.add(err.reason)
        left = current._exp_ts - now
        keep = "keeping the current token" + (
            f" (valid for another {_fmt.duration(left)})" if math.isfinite(left) and left > 0 else ""
        )
        notes.add(_log.WARNING, "sa-token: re-read failed: %s; %s", err, keep)

    def _warn_if_stale(self, tok: Token, now: float, notes: Notes) -> None:
        late = stale_for(tok, now)
        fingerprint = hash(tok.value)
        if late is None or self._stale_warned == fingerprint:
            return
        self._stale_warned = fingerprint
        exp = tok._exp_ts
        notes.add(
            _log.WARNING,
            "sa-token: token at %s passed its rotation point (%s) and was not rotated: the kubelet is "
            "not rotating it (see kubernetes issue 138689); it expires at %s",
            _fmt.path(self.path),
            _fmt.iso(tok._rotation_ts),
            _fmt.iso(exp) if math.isfinite(exp) else "never",
        )


def require_source(source: T, what: str) -> T:
    """``source``, refused at once with a `TypeError` when it is a path (or a token) where a
    `TokenSource` belongs: the one rule of every integration (``what`` names the call). Any other
    object passes: integrations duck-type their source."""
    if isinstance(source, (str, bytes, os.PathLike)):
        given = os.fsdecode(source) if isinstance(source, (bytes, os.PathLike)) else source
        if _fmt.looks_like_jwt(given):  # (it strips each path element itself)
            raise TypeError(
                f"{what} takes a TokenSource, not a token: pass TokenSource(<the token file's path>)"
            )
        raise TypeError(
            f"{what} takes a TokenSource, not a path: pass TokenSource({_fmt.path(given)!r}) "
            "(with audience= the token must carry)"
        )
    return source


class _Deadline:
    """A source's planned re-read: re-read its file, unless the source went away (the hub drops
    an entry the source replaced). It holds the source weakly: a dropped source is collected."""

    __slots__ = ("source",)

    def __init__(self, source: weakref.ref[TokenSource]) -> None:
        self.source = source

    def __call__(self) -> None:
        src = self.source()
        if src is None or src._closed:
            return
        src._file.refresh(seen=src._snap.generation)  # skipped if another thread just read it


def _timestamp(value: Union[float, datetime]) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("older_than must be an aware datetime (or a POSIX timestamp)")
        return value.timestamp()
    return float(value)


def _utc(ts: float) -> Optional[datetime]:
    try:
        return datetime.fromtimestamp(ts, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def _copy_error(err: TokenError) -> TokenError:
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

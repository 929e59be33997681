"""`TokenSource`: always hand out the current, valid projected ServiceAccount token.

Every source on one file with the same settings shares one `FileView` (`sa_token._tokenfile`)
holding one immutable `Snapshot`: the last good token, when it was read, when to read the file
again, the window in which it may be served (from ``nbf``/``iat`` less the leeway until the
earlier of ``exp`` and the next re-read, plus a second's grace for the watcher thread to do it)
and the last read error. The snapshot is replaced as a whole, only under the file's lock;
readers take it with two attribute reads.

`TokenSource.token` reads the clock once and compares it with the snapshot's window: inside it,
it returns the token; past it, it re-reads the file (one thread reads, the others wait for it)
and checks again, or raises. So no background thread is needed for correctness: the process-wide
watcher thread (`sa_token._hub`) only makes pickups early, re-reading on the kubelet's
``..data`` swap and at each deadline. See docs/model.md for the whole picture.
"""

from __future__ import annotations

import math
import os
import time
import weakref
from collections.abc import Iterable
from datetime import datetime
from typing import Callable, Optional, TypeVar, Union

from . import _clock, _fmt
from ._hub import HUB
from ._locks import inside
from ._paths import DEFAULT_TOKEN_PATH
from ._snapshot import Snapshot, TokenStatus, status_of
from ._subscribers import Subscribers
from ._token import Token
from ._tokenfile import REQUEST_GRACE, FileView, TokenFile, copy_error
from ._validity import DEFAULT_LEEWAY, STALE_MARGIN, Expectations, time_error

__all__ = [
    "DEFAULT_LEEWAY",
    "DEFAULT_TOKEN_PATH",
    "REQUEST_GRACE",
    "STALE_MARGIN",
    "TokenSource",
    "TokenStatus",
    "require_source",
]


# Fallback re-read period: the platform docs ask apps to reload the token at least every 5 minutes.
DEFAULT_REFRESH_INTERVAL = 300.0

Clock = Callable[[], float]
T = TypeVar("T")
Subscriber = Callable[[Token], None]


class _Closed:
    """What a closed source reads instead of its view: the last snapshot, never servable."""

    __slots__ = ("snap",)

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap._replace(serve_until=-math.inf, refresh_at=math.inf)


def _audiences(audience: Union[str, Iterable[str], None]) -> Optional[tuple[str, ...]]:
    if audience is None or isinstance(audience, str):
        return None if audience is None else (audience,)
    audiences = tuple(audience)
    if not audiences or not all(isinstance(a, str) for a in audiences):
        raise ValueError("audience must be a string or a non-empty iterable of strings")
    return audiences


def _seconds(name: str, value: float, *, zero: bool) -> float:
    ok = isinstance(value, (int, float)) and (value >= 0 if zero else value > 0) and value < math.inf
    if not ok:
        what = "non-negative" if zero else "positive"
        raise ValueError(f"{name} must be a {what} number of seconds, got {value!r}")
    return float(value)


class TokenSource:
    """The current, valid token from a projected ServiceAccount token file.

    ```python
    src = TokenSource("/var/run/secrets/tokens/vault", audience="vault")
    requests.get(url, headers={"Authorization": f"Bearer {src.token()}"})
    ```

    The constructor reads the file (or takes the read another source of the process just made,
    when the file is unchanged since): a wrong path, an unreadable or malformed file, or a token
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

    Thread-safe and fork-safe (sources keep rotating in a forked child). Sources of one file
    with the same settings share their reads, their snapshot and their re-read plan: a
    rotation costs the same for one source or ten thousand. Use it as a context manager or
    call `close` to stop watching.
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
        self.refresh_interval = _seconds("refresh_interval", refresh_interval, zero=False)
        self.leeway = _seconds("leeway", leeway, zero=True)
        self.audiences = _audiences(audience)
        self.path = os.path.abspath(os.fspath(path))
        self.issuer = issuer
        self._expect = Expectations(self.audiences, issuer, self.leeway)
        self._clock = clock
        self._watch = bool(watch)
        self._subscribers: Subscribers[Token] = Subscribers(self.path)
        self._closed = False
        self._file: TokenFile  # these three set by _join
        self._shared: FileView
        self._view: Union[FileView, _Closed]  # what token() reads: the shared view, or the last one
        # Register (and arm the watch) before the first read: a rotation after this point
        # raises an event. One registry operation; undone below if the read fails.
        tfile = HUB.acquire(self.path, lambda: TokenFile(self.path), watch=self._watch)
        try:
            first, now = _join(self, tfile)
        except BaseException:
            HUB.release(tfile, watch=self._watch)
            raise
        # A source dropped without close() releases its registration, and its view's deadline
        # once no source is left on it, from the hub's thread.
        self._finalizer = weakref.finalize(self, HUB.release_later, tfile, self._watch, self._shared)
        self._finalizer.atexit = False
        tfile.warn_at_start(first, now, self.leeway)

    # ------------------------------------------------------------------ public API -------
    def token(self) -> str:
        """The current token string. O(1) and free of I/O unless a deadline passed (the
        rotation point, the refresh interval), in which case the file is re-read first.

        Raises `TokenExpiredError` (or `TokenNotYetValidError`) rather than return a token
        known to be unusable, and `RuntimeError` once the source is closed.
        """
        snap = self._view.snap
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
        snap = self._view.snap
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
        tok = self._current_nowait()
        return None if tok is None else tok.value

    async def atoken(self) -> str:
        """`token` for asyncio: any file read runs in a worker thread."""
        tok = self._current_nowait()
        if tok is not None:
            return tok.value
        import asyncio  # here, not at the top: most users never need it, and it is slow to import

        return await asyncio.get_running_loop().run_in_executor(None, self.token)

    def reload(self) -> Token:
        """Re-read the file now. If that read fails, raise its error (the source keeps serving
        the last good token); otherwise return the current token, checked like `token`."""
        self._ensure_open()
        self._file.refresh()  # skipped by a thread inside a read of this file already (a finalizer)
        err = self._view.snap.error
        if err is not None:
            raise copy_error(err)
        return self.current()

    def invalidate(self, older_than: Union[float, datetime, None] = None) -> None:
        """Forget the token if it was read before ``older_than`` (a POSIX timestamp or an aware
        datetime; ``None``: unconditionally), so that the next `token` re-reads the file.

        This is client-go's ``ResetTokenOlderThan``: after a 401, invalidate tokens read before
        the request started; concurrent 401s then cause one re-read. ``older_than`` is in the
        source's ``clock=`` time (wall-clock time without one); `invalidate_if` needs no clock.
        Unlike client-go the old token is kept as a fallback in case the re-read fails. Sources
        of the file with the same settings share the token: they re-read too.
        """
        cutoff = math.inf if older_than is None else _timestamp(older_than)
        self._forget(lambda snap: snap.read_at < cutoff)

    def invalidate_if(self, sent: Token) -> bool:
        """Forget the token if it is still ``sent`` (the `Token` a request carried and a server
        rejected), so that the next `token` re-reads the file; returns whether it did. A
        compare-and-swap: once anything re-read the file, ``sent`` is no longer current and
        nothing happens, so a burst of 401s for one token causes one re-read. No timestamps: it
        works whatever ``clock=`` says. What every integration calls after a rejection."""
        return self._forget(lambda snap: snap.token is sent)

    def _forget(self, rule: Callable[[Snapshot], bool]) -> bool:
        if inside():  # from a finalizer inside our own work: an attribute store, no lock
            return not self._closed and self._shared.forget(rule)
        with self._file.lock:
            return not self._closed and self._shared.forget(rule)

    def _current_nowait(self) -> Optional[Token]:
        """The parsed token if it can be handed out without I/O, else ``None``."""
        snap = self._view.snap
        now = self._now()
        if snap.serve_from <= now < snap.serve_until:
            return snap.token
        return None

    @property
    def _snap(self) -> Snapshot:
        return self._view.snap

    @property
    def read_at(self) -> float:
        """When the current token was last read from the file (``clock`` time)."""
        return self._view.snap.read_at

    @property
    def watching(self) -> bool:
        """Whether inotify watches the file (else only the timer re-reads it)."""
        return not self._closed and self._watch and self._file.watching

    def status(self) -> TokenStatus:
        """The source's state now: no I/O, no token. See `TokenStatus`."""
        watching = "closed" if self._closed else ("inotify" if self.watching else "timer")
        return status_of(
            self._view.snap, self._now(), path=self.path, audiences=self.audiences, leeway=self.leeway,
            watching=watching,
        )

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(token)`` after each rotation (a new, valid token was read). Returns a
        function that unsubscribes. Callbacks run in a thread of this source's own, in order,
        never on the watcher thread: a slow callback delays only this source's next callbacks.
        What they raise is logged."""
        unsubscribe = self._subscribers.add(callback)
        if inside():  # from a finalizer inside our own work: the hub's thread takes the lock
            HUB.defer(lambda: self._shared.listen(self))
        else:
            self._shared.listen(self)
        return unsubscribe

    def close(self) -> None:
        """Stop watching and re-reading. Idempotent. The last token stays readable through
        `current` (while it is valid); `token` and `reload` raise `RuntimeError`.

        Safe from a finalizer (``__del__``): when the garbage collector runs it inside sa-token's
        own locked work on this thread, the source is closed at once and its registration is
        released by the watcher thread, instead of this thread waiting for itself."""
        if inside():
            if not self._closed:
                self._closed = True
                self._view = _Closed(self._view.snap)
                HUB.defer(self._finish_close)
            return
        self._finish_close()

    def _finish_close(self) -> None:
        with self._file.lock:
            if not self._closed:
                self._closed = True
                self._view = _Closed(self._view.snap)
            self._shared.leave(self)
        if self._finalizer.detach() is not None:  # once: a second close() finds it detached
            HUB.release(self._file, watch=self._watch, slot=self._shared)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> TokenSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        view = getattr(self, "_view", None)  # None while __init__ reads
        exp = None if view is None else view.snap.token.expires_at
        mode = "closed" if self._closed else ("inotify" if view and self.watching else "timer")
        aud, until = list(self.audiences) if self.audiences else None, exp.isoformat() if exp else None
        return f"TokenSource(path={self.path!r}, audience={aud!r}, mode={mode}, expires_at={until!r})"

    # ------------------------------------------------------------------ internals --------
    def _now(self) -> float:
        return _clock.now(self._clock)

    def _ensure_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"TokenSource for {_fmt.path(self.path)} is closed")

    def _checked(self, now: float) -> Token:
        """The slow path: re-read if due (single flight), then serve or raise."""
        self._ensure_open()
        return self._shared.checked(now)


def _join(source: TokenSource, tfile: TokenFile) -> tuple[Token, float]:
    """Join ``source`` to the view of its settings on ``tfile`` (made, and the file read, if
    it is the first); the first token and when it was taken."""
    if inside():
        raise RuntimeError(
            f"sa-token: a TokenSource for {_fmt.path(source.path)} cannot be created while this "
            "thread is reading that file (from a finalizer the garbage collector ran there): "
            "create it outside __del__"
        )
    now = source._now()  # before the lock: an injected clock never runs under it
    key = (source._expect, source.refresh_interval, source._clock)

    def make() -> FileView:
        return FileView(tfile, source._expect, source.refresh_interval, source._clock)

    source._file = tfile
    source._shared, first = tfile.join(source, key, make, now)
    source._view = source._shared  # what token() reads
    return first, now


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


def _timestamp(value: Union[float, datetime]) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("older_than must be an aware datetime (or a POSIX timestamp)")
        return value.timestamp()
    return float(value)

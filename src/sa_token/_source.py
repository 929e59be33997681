"""``TokenSource``: always hand out the current, valid projected ServiceAccount token.

How it stays current without I/O on the request path:

* the file is read once at construction (errors surface there, typed);
* the process-wide watcher (`sa_token._watch`) re-reads it when inotify reports the
  kubelet's ``..data`` swap, within milliseconds;
* the timer thread re-reads it every ``refresh_interval`` and at the kubelet's rotation point
  (80% of the lifetime), in case an event was missed or inotify is unavailable;
* [`TokenSource.token()`][sa_token.TokenSource.token] checks one deadline (the earliest of ``exp`` and the
  next scheduled re-read) and returns the cached string; past the deadline it re-reads first.

A re-read that fails keeps the last good token while it is valid (one warning per distinct
failure). A token known to be expired is never handed out.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Callable, Optional, Union

from ._read import read_token_file
from ._subscribers import Subscribers
from ._token import Token
from ._watch import HUB, watch_targets
from .errors import (
    AudienceMismatchError,
    IssuerMismatchError,
    TokenError,
    TokenExpiredError,
    TokenNotYetValidError,
    TokenValidationError,
)

__all__ = ["DEFAULT_TOKEN_PATH", "TokenSource"]

log = logging.getLogger("sa_token")

# Where the kubelet mounts the default kube-api-access volume (DefaultAPITokenMountPath).
DEFAULT_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"
# Fallback re-read period: the platform docs ask apps to reload the token at least every 5 minutes.
DEFAULT_REFRESH_INTERVAL = 300.0
# Allowed clock skew for nbf/iat: the API server stamps them with its own clock; go-jose's
# jwt.DefaultLeeway, which the API server's authenticator uses, is one minute.
DEFAULT_LEEWAY = 60.0
# After the rotation point, how long to wait for the kubelet before warning that it is not
# rotating: its jitter (up to 10 s) plus the pod resync period (1 min with 50% jitter, 90 s).
STALE_MARGIN = 100.0
# After a failed re-read, retry this soon (not on every token() call): mid-swap failures heal
# with the next event, and this bounds the I/O a failing file causes on the request path.
FAILED_READ_RETRY = 5.0
# token()'s fast path reads no clock: the timer thread switches it off this long before the
# next deadline (expiry, rotation point, refresh), so a late wake-up (GIL hand-off, a loaded
# machine) cannot serve a token past its deadline; until the deadline token() checks the clock.
HOT_GUARD = 1.0

_wall = time.time  # module-level so that freezegun can patch it

Clock = Callable[[], float]
Subscriber = Callable[[Token], None]


class _TokenFile:
    """One token file, shared by every TokenSource on that path: one watch, one read per
    rotation, results dispatched to each source (which applies its own audience/issuer)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.generation = 0
        # Weak: an app that drops a source without close() must not keep it alive forever.
        self.sources: weakref.WeakSet[TokenSource] = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"_TokenFile({self.path!r}, sources={len(self.sources)})"

    def refresh(self, seen_generation: Optional[int] = None) -> None:
        """Re-read and dispatch. With ``seen_generation``, skip the read if another thread
        read the file since that generation (single flight)."""
        rotated: list[tuple[TokenSource, Token]] = []
        with self.lock:
            if seen_generation is not None and self.generation != seen_generation:
                return
            try:
                result: Union[Token, TokenError] = read_token_file(self.path)
            except TokenError as exc:
                result = exc
            self.generation += 1
            for src in list(self.sources):
                tok = src._accept(result)
                if tok is not None:
                    rotated.append((src, tok))
        for src, tok in rotated:
            src._notify(tok)

    def refresh_safely(self) -> None:
        """For the watcher and timer threads: never let an error escape into them."""
        try:
            self.refresh()
        except Exception:  # pragma: no cover - a bug; keep the thread alive
            log.exception("sa-token: unexpected error re-reading %s", self.path)

    def _after_fork(self) -> None:
        self.lock = threading.Lock()


_FILES: dict[str, _TokenFile] = {}
_FILES_LOCK = threading.Lock()


def _reset_files_lock() -> None:  # after fork(): another thread may have held it
    global _FILES_LOCK  # noqa: PLW0603
    _FILES_LOCK = threading.Lock()
    for f in _FILES.values():
        f._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_files_lock)


def _release(tfile: _TokenFile) -> None:
    """A source was closed or garbage-collected: drop the file's watch once nobody uses it."""
    with _FILES_LOCK:
        if not tfile.sources and _FILES.get(tfile.path) is tfile:
            del _FILES[tfile.path]
            HUB.unwatch(tfile)


def _timestamp(value: Union[float, datetime]) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("older_than must be an aware datetime (or a POSIX timestamp)")
        return value.timestamp()
    return float(value)


def _ago(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _iso(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "far future" if ts > 0 else "far past"


class TokenSource:
    """The current, valid token from a projected ServiceAccount token file.

    ```python
    src = TokenSource("/var/run/secrets/tokens/vault", audience="vault")
    requests.get(url, headers={"Authorization": f"Bearer {src.token()}"})
    ```

    The constructor reads the file: a wrong path, an unreadable or malformed file, or a token
    for another audience or issuer raises there (see [`sa_token.errors`][sa_token.errors]). Afterwards the
    token is re-read when the kubelet rotates it (inotify on the volume directory), every
    ``refresh_interval`` seconds and at the kubelet's rotation point, in the background.

    Options (keyword-only):

    * ``audience``: the audience (or audiences, any one suffices) the token must carry.
    * ``issuer``: the exact ``iss`` the token must carry.
    * ``refresh_interval``: the fallback re-read period in seconds (default 300).
    * ``watch``: use inotify (default True); False leaves only the timer.
    * ``leeway``: seconds of clock skew allowed for ``nbf``/``iat`` (default 60). ``exp`` gets
      none: the kubelet writes the file on this node's clock and rotates long before expiry.
    * ``clock``: a ``time.time``-like function, for tests.

    Thread-safe; fork-safe (sources keep rotating in the child). Use as a context manager or
    call [`close()`][sa_token.TokenSource.close] to stop watching.
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
        self.path = os.path.abspath(os.fspath(path))
        if audience is None:
            self.audiences: Optional[tuple[str, ...]] = None
        elif isinstance(audience, str):
            self.audiences = (audience,)
        else:
            self.audiences = tuple(audience)
            if not self.audiences or not all(isinstance(a, str) for a in self.audiences):
                raise ValueError("audience must be a string or a non-empty iterable of strings")
        self.issuer = issuer
        self.refresh_interval = float(refresh_interval)
        self.leeway = float(leeway)
        self._clock = clock
        self._subscribers: Subscribers[Token] = Subscribers(self.path)
        self._warned: set[tuple[str, str]] = set()
        self._stale_warned: Optional[str] = None
        self._last_error: Optional[TokenError] = None
        self._closed = False
        # The state, replaced as a whole (never mutated), so readers need no lock:
        self._token: Optional[Token] = None
        self._read_at = -math.inf  # clock time of the last successful read
        self._due = -math.inf  # clock time of the next scheduled re-read
        self._fast: tuple[str, float] = ("", -math.inf)  # (value, deadline) for token()
        # token()'s fast path: the value while no deadline is near, else None. The timer thread
        # clears it HOT_GUARD before the deadline, so token() needs no clock read at all.
        self._hot: Optional[str] = None
        self._hot_until = -math.inf  # time.monotonic() when the timer clears _hot
        self._bg_due = math.inf  # time.monotonic() deadline for the timer's background re-read

        with _FILES_LOCK:
            tfile = _FILES.get(self.path)
            if tfile is None:
                tfile = _FILES[self.path] = _TokenFile(self.path)
        self._file = tfile
        # Arm the watch before the first read: a rotation after this point raises an event.
        self.watching = False
        if watch:
            self.watching = HUB.watch(tfile, watch_targets(self.path))
        with tfile.lock:
            try:
                first = read_token_file(self.path)
                self._check_binding(first)
            except TokenError:
                self._detach()
                raise
            tfile.sources.add(self)
            self._accept(first)
        # A source dropped without close() releases its file later, from the timer thread: the
        # finalizer runs inside the garbage collector, wherever it strikes (maybe under our locks).
        self._finalizer = weakref.finalize(self, HUB.defer, _release, tfile)
        self._finalizer.atexit = False
        HUB.add_source(self)
        problem = self._time_error(first, self._now())
        if problem is not None:
            log.warning("sa-token: %s", problem)

    # ------------------------------------------------------------------ public API -------
    def token(self) -> str:
        """The current token string. O(1) and free of I/O unless a deadline passed (expiry,
        rotation point, refresh interval), in which case the file is re-read first.

        Raises [`TokenExpiredError`][sa_token.errors.TokenExpiredError] (or
        [`TokenNotYetValidError`][sa_token.errors.TokenNotYetValidError]) rather than return a token known to
        be unusable.
        """
        value = self._hot
        if value is not None:
            return value
        return self._checked_token()

    def _checked_token(self) -> str:
        # The hot path is off: near a deadline, after invalidate(), with an injected clock.
        value, deadline = self._fast
        if self._now() < deadline:
            return value
        return self._refresh_and_check().value

    __call__ = token  # a TokenSource is a Callable[[], str] token provider

    def token_nowait(self) -> Optional[str]:
        """The token if it can be answered without I/O, else ``None`` (then call
        [`token()`][sa_token.TokenSource.token] from a worker thread). For async code that must not block its
        event loop."""
        value = self._hot
        if value is not None:
            return value
        value, deadline = self._fast
        if self._now() < deadline:
            return value
        return None

    async def atoken(self) -> str:
        """[`token()`][sa_token.TokenSource.token] for asyncio: any file read runs in a worker thread."""
        value = self.token_nowait()
        if value is not None:
            return value
        import asyncio  # here, not at the top: most users never need it, and it is slow to import

        return await asyncio.get_running_loop().run_in_executor(None, self.token)

    def current(self) -> Token:
        """The parsed current token, checked like [`token()`][sa_token.TokenSource.token]. After
        [`close()`][sa_token.TokenSource.close] it is the last token read (still checked for expiry; the file
        is not read again)."""
        tok = self._token
        if self._closed and tok is not None:
            err = self._time_error(tok, self._now())
            if err is not None:
                raise err
            return tok
        _, deadline = self._fast
        if tok is not None and self._now() < deadline:
            return tok
        return self._refresh_and_check()

    def reload(self) -> Token:
        """Re-read the file now. If that read fails, raise its error (the source keeps serving the last good
        token); otherwise return the current token, checked like [`token()`][sa_token.TokenSource.token]."""
        self._ensure_open()
        self._file.refresh()
        err = self._last_error
        if err is not None:
            raise copy.copy(err)
        return self.current()

    def invalidate(self, older_than: Union[float, datetime, None] = None) -> None:
        """Forget the token if it was read before ``older_than`` (a POSIX timestamp or an aware datetime;
        ``None``: unconditionally), so the next [`token()`][sa_token.TokenSource.token] re-reads the file.

        This is client-go's ``ResetTokenOlderThan``: after a 401, invalidate tokens read before
        the request started; concurrent 401s then cause a single re-read. Unlike client-go the
        old token is kept as a fallback in case the re-read fails.
        """
        cutoff = math.inf if older_than is None else _timestamp(older_than)
        with self._file.lock:
            if self._read_at < cutoff:
                self._hot = None
                self._fast = (self._fast[0], -math.inf)

    @property
    def read_at(self) -> float:
        """When the current token was last read from the file (``clock`` time)."""
        return self._read_at

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(token)`` after each rotation (a new, valid token was read). Returns a
        function that unsubscribes. Callbacks run in the watcher or timer thread, or in the
        thread whose call noticed the rotation: keep them short. Errors they raise are logged."""
        return self._subscribers.add(callback)

    def close(self) -> None:
        """Stop watching and re-reading. Idempotent. The last token stays readable through
        [`current()`][sa_token.TokenSource.current] (while it is valid);
        [`token()`][sa_token.TokenSource.token] and [`reload()`][sa_token.TokenSource.reload] raise
        ``RuntimeError`` once the source is closed."""
        if self._closed:
            return
        self._closed = True
        self._hot = None
        self._fast = ("", -math.inf)
        HUB.remove_source(self)
        with self._file.lock:
            self._file.sources.discard(self)
        self._finalizer.detach()
        self._detach()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> TokenSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        tok = self._token
        exp = tok.expires_at if tok is not None else None
        mode = "closed" if self._closed else ("inotify" if self.watching else "timer")
        aud = list(self.audiences) if self.audiences else None
        return (
            f"TokenSource(path={self.path!r}, audience={aud!r}, mode={mode}, "
            f"expires_at={exp.isoformat() if exp else None!r})"
        )

    # ------------------------------------------------------------------ internals --------
    def _now(self) -> float:
        return _wall() if self._clock is None else self._clock()

    def _ensure_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"TokenSource for {self.path} is closed")

    def _detach(self) -> None:
        _release(self._file)

    def _refresh_and_check(self) -> Token:
        self._ensure_open()
        _, deadline = self._fast
        if self._now() >= deadline:
            self._file.refresh(seen_generation=self._file.generation)
        tok = self._token
        assert tok is not None  # set by the constructor
        err = self._time_error(tok, self._now())
        if err is not None:
            raise err
        return tok

    def _check_binding(self, tok: Token) -> None:
        """Raise if the token is not for our audience or issuer (a configuration error)."""
        if self.audiences is not None and not set(self.audiences) & set(tok.audiences):
            want = self.audiences[0] if len(self.audiences) == 1 else list(self.audiences)
            raise AudienceMismatchError(
                f"token at {self.path} is for audience {list(tok.audiences)!r}, not {want!r}; "
                "set serviceAccountToken.audience in the pod's projected volume, or pass the "
                "audience this token is for",
                path=self.path,
            )
        if self.issuer is not None and tok.issuer != self.issuer:
            raise IssuerMismatchError(
                f"token at {self.path} was issued by {tok.issuer!r}, not {self.issuer!r}; "
                "check the cluster's --service-account-issuer or the issuer you expect",
                path=self.path,
            )

    def _time_error(self, tok: Token, now: float) -> Optional[TokenError]:
        exp = tok._exp_ts
        if now >= exp:
            # Mention a failed read (missing, garbage...), not another expiry: that would nest.
            last = self._last_error if not isinstance(self._last_error, TokenValidationError) else None
            return TokenExpiredError(
                f"token at {self.path} expired at {_iso(exp)}, {_ago(now - exp)} ago; the kubelet "
                "should have rotated it at 80% of its lifetime: check the kubelet and the volume "
                "(a subPath mount never rotates)"
                + (f"; the last re-read failed: {last}" if last is not None else ""),
                path=self.path,
                expires_at=tok.expires_at,
            )
        for claim in ("nbf", "iat"):
            t = tok.claims.get(claim)
            if t is not None and t - self.leeway > now:
                return TokenNotYetValidError(
                    f"token at {self.path} is not valid until {_iso(t)} ({claim} is {_ago(t - now)} "
                    f"in the future, beyond the {self.leeway:.0f}s leeway); check this node's clock",
                    path=self.path,
                )
        return None

    def _accept(self, result: Union[Token, TokenError]) -> Optional[Token]:
        """Apply a read result (under the file lock). Returns the new token on a rotation."""
        now = self._now()
        current = self._token
        if isinstance(result, Token):
            try:
                self._check_binding(result)
            except TokenError as exc:
                result = exc
        if isinstance(result, TokenError):
            self._fail(result, now)
            return None
        if current is not None and result.value != current.value:
            problem = self._time_error(result, now)
            if problem is not None and self._time_error(current, now) is None:
                self._fail(problem, now)  # keep the valid token over a worse one
                return None
        self._last_error = None
        self._warned.clear()
        self._schedule(result, now)
        if current is not None and result.value == current.value:
            self._check_stale(result, now)
            return None
        return result if current is not None else None

    def _fail(self, err: TokenError, now: float) -> None:
        self._last_error = err
        current = self._token
        if current is None:
            return
        # One warning per cause: a file error is one cause per errno, whatever its hint says (a
        # missing file reads as "dangling symlink" or not depending on the moment of the swap).
        errno_ = getattr(err, "errno", None)
        key = (type(err).__name__, f"errno {errno_}" if errno_ is not None else str(err))
        if key not in self._warned:
            self._warned.add(key)
            left = current._exp_ts - now
            keep = "keeping the current token" + (
                f" (valid for another {_ago(left)})" if math.isfinite(left) and left > 0 else ""
            )
            log.warning("sa-token: re-read failed: %s; %s", err, keep)
        retry = now + FAILED_READ_RETRY
        if retry < self._due:
            self._due = retry
            self._publish(current, now)
        return

    def _schedule(self, tok: Token, now: float) -> None:
        due = now + self.refresh_interval
        rp = tok._rotation_ts
        if rp is not None:
            if now < rp:
                due = min(due, rp)
            elif now < rp + STALE_MARGIN:
                due = min(due, rp + STALE_MARGIN)
        self._token = tok
        self._read_at = now
        self._due = due
        self._publish(tok, now)

    def _publish(self, tok: Token, now: float) -> None:
        deadline = min(self._due, tok._exp_ts)
        start = max(tok.claims.get(c, -math.inf) for c in ("nbf", "iat")) - self.leeway
        if now < start:  # not yet valid: no fast path, token() checks (and raises) every time
            deadline = -math.inf
        self._fast = (tok.value, deadline)
        mono = time.monotonic()
        left = deadline - now
        self._bg_due = mono + max(0.0, left)
        if self._clock is None and left > HOT_GUARD:
            self._hot_until = mono + left - HOT_GUARD
            self._hot = tok.value
        else:
            self._hot = None
            self._hot_until = math.inf
        HUB.wake_before(min(self._bg_due, self._hot_until))

    def _expire_hot(self, mono: float) -> None:
        """Timer thread: turn the fast path off once a deadline is near (or the wall clock
        jumped past it)."""
        if self._hot is not None and (mono >= self._hot_until or _wall() >= self._fast[1] - HOT_GUARD):
            self._hot = None
            self._hot_until = math.inf

    def _reschedule_background(self) -> None:
        """Called by the timer after it triggered a read: never leave a past deadline behind."""
        if self._bg_due <= time.monotonic():
            self._bg_due = time.monotonic() + min(self.refresh_interval, FAILED_READ_RETRY)

    def _check_stale(self, tok: Token, now: float) -> None:
        rp = tok._rotation_ts
        if rp is None or now < rp + STALE_MARGIN or self._stale_warned == tok.claims.get("jti", id(tok)):
            return
        self._stale_warned = tok.claims.get("jti", id(tok))
        exp = tok._exp_ts
        log.warning(
            "sa-token: token at %s passed its rotation point (%s) %s ago and was not rotated: the "
            "kubelet is not rotating it (see kubernetes issue 138689); it expires at %s",
            self.path,
            _iso(rp),
            _ago(now - rp),
            _iso(exp) if math.isfinite(exp) else "never",
        )

    def _notify(self, tok: Token) -> None:
        self._subscribers.notify(tok)

    def _after_fork(self) -> None:
        self._subscribers.after_fork()
        self._hot = None  # the first call in the child checks the clock

"""``CABundle``: the cluster CA from a projected ``ca.crt``, following its rotations.

The kube-api-access volume holds ``ca.crt`` next to the token; when the cluster CA is rotated
the kubelet publishes the new bundle with the same ``..data`` swap it uses for tokens. Clients
that load the CA once (kubernetes_asyncio, ``kubernetes.aio``, most ``requests`` code) then fail
every new connection with ``CERTIFICATE_VERIFY_FAILED`` until they restart (kubernetes#119483);
clients that hand the *path* to their TLS stack (the sync ``kubernetes`` client via urllib3)
re-read it per connection and break as soon as the file is momentarily bad.

``CABundle`` holds the last good bundle and one ``ssl.SSLContext`` built from it:

* the file is read and validated at construction (a typed `CAFileError` otherwise);
* it is re-checked when the volume's ``..data`` swap is reported by inotify (the same watcher
  as the tokens), on `refresh()`, and at most every ``check_interval`` seconds when
  `pem` or `ssl_context()` is used (a ``stat``, and a read only if it changed);
* a new bundle that cannot be used (empty, garbage, unreadable, missing mid-swap) is ignored
  with one warning: the previous CA stays in force, as in client-go's CA rotation;
* a new, valid bundle gets a new context and a new `generation`, and subscribers are
  called, so integrations can drop pooled connections that verified against the old CA.
"""

from __future__ import annotations

import errno as _errno
import logging
import math
import os
import ssl
import threading
import time
import weakref
from typing import TYPE_CHECKING, Callable, Optional, Union

from ._read import read_bounded
from ._subscribers import Subscribers
from ._watch import HUB, watch_targets
from .errors import TokenFileError

if TYPE_CHECKING:
    pass

__all__ = ["DEFAULT_CA_PATH", "DEFAULT_CHECK_INTERVAL", "CABundle", "CAFileError"]

log = logging.getLogger("sa_token")

# Where the kubelet mounts the kube-api-access volume's CA bundle.
DEFAULT_CA_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
# Fallback re-check period. The kubelet publishes a new ca.crt on its pod sync (about a minute
# after the kube-root-ca.crt ConfigMap changed), so checking more often gains little; a stat per
# minute costs nothing. client-go checks every 5 minutes, but it has no inotify; here this is only
# the fallback when inotify is unavailable or an event was missed.
DEFAULT_CHECK_INTERVAL = 60.0
# A cluster CA bundle is a few KiB; even a full public-CA bundle is under 1 MiB. Anything larger
# is not a CA file (a log, an image...) and is refused rather than parsed.
MAX_CA_BYTES = 4 * 1024 * 1024

Subscriber = Callable[[bytes], None]


class CAFileError(TokenFileError):
    """The CA file is missing, unreadable, empty, too large or not a PEM certificate bundle.

    A [`TokenFileError`][sa_token.errors.TokenFileError] (and so an ``OSError``); ``path`` names the file.
    """


def load_ca_file(path: str) -> tuple[bytes, ssl.SSLContext]:
    """Read ``path`` and build a client ``SSLContext`` trusting exactly its certificates.

    Raises `CAFileError` naming the file and the cause."""
    try:
        raw = read_bounded(path, MAX_CA_BYTES)
    except OSError as exc:
        raise _file_error(path, exc) from None
    if not raw.strip():
        raise CAFileError(f"CA file {path} is empty", path=path)
    if b"-----BEGIN CERTIFICATE-----" not in raw:
        raise CAFileError(
            f"CA file {path} contains no PEM certificate (no -----BEGIN CERTIFICATE----- line)", path=path
        )
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise CAFileError(f"CA file {path} is not PEM: it contains non-ASCII bytes", path=path) from None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=text)
    except (ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        raise CAFileError(
            f"CA file {path} is not a valid PEM certificate bundle ({reason})", path=path
        ) from None
    return raw, ctx


def _file_error(path: str, exc: OSError) -> CAFileError:
    code = exc.errno
    if isinstance(exc, FileNotFoundError):
        hint = (
            "it is a dangling symlink (the projected volume's ..data target is gone)"
            if os.path.islink(path)
            else "outside a pod, pass the CA bundle's path; in a pod, check that the "
            "kube-api-access (or a projected configMap kube-root-ca.crt) volume is mounted"
        )
        return CAFileError(f"CA file {path} does not exist: {hint}", path=path, errno=code)
    if isinstance(exc, PermissionError):
        return CAFileError(f"cannot read CA file {path}: permission denied", path=path, errno=code)
    if isinstance(exc, IsADirectoryError):
        return CAFileError(f"CA file {path} is a directory, not a file", path=path, errno=code)
    if code == _errno.EFBIG:
        return CAFileError(f"CA file {path} is larger than {MAX_CA_BYTES} bytes: not a CA bundle", path=path)
    if code == _errno.EINVAL:
        return CAFileError(f"CA file {path} is not a regular file", path=path, errno=code)
    reason = os.strerror(code) if code else type(exc).__name__
    return CAFileError(f"cannot read CA file {path}: {reason}", path=path, errno=code)


def _signature(path: str) -> Optional[tuple[int, int, int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class _Watcher:
    """What the inotify hub holds (it calls ``refresh_safely`` on the volume's events). It refers
    to the bundle weakly: a bundle dropped without close() is unwatched when collected."""

    def __init__(self, bundle: CABundle) -> None:
        self.bundle = weakref.ref(bundle)

    def refresh_safely(self) -> None:
        bundle = self.bundle()
        if bundle is None:
            return
        try:
            bundle.refresh()
        except Exception:  # pragma: no cover - a bug; keep the watcher thread alive
            log.exception("sa-token: unexpected error re-reading CA file %s", bundle.path)

    def _after_fork(self) -> None:  # the hub calls it in a forked child, before any thread runs
        bundle = self.bundle()
        if bundle is not None:
            bundle._lock = threading.Lock()
            bundle._subscribers.after_fork()


class CABundle:
    """The current, valid CA bundle from a (projected) ``ca.crt``, and an ``SSLContext`` for it.

    ```python
    ca = CABundle("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
    ctx = ca.ssl_context()       # verify the API server; a new object after a CA rotation
    ```

    Options (keyword-only):

    * ``check_interval``: re-check the file at most this often (seconds) when [`pem`][sa_token.CABundle.pem]
      or [`ssl_context()`][sa_token.CABundle.ssl_context] is used (default 60). ``0`` checks on every use.
    * ``watch``: also re-check on inotify events for the file's volume (default True).
    * ``clock``: a ``time.monotonic``-like function, for tests.

    The context trusts exactly the bundle's certificates (not the system store), verifies the
    hostname and is shared: do not modify it; build your own from [`pem`][sa_token.CABundle.pem] if you need
    client certificates. Thread-safe. [`close()`][sa_token.CABundle.close] stops watching.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike[str]] = DEFAULT_CA_PATH,
        *,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        watch: bool = True,
        clock: Optional[Callable[[], float]] = None,
    ) -> None:
        if not (isinstance(check_interval, (int, float)) and 0 <= check_interval < math.inf):
            raise ValueError(f"check_interval must be a number of seconds >= 0, not {check_interval!r}")
        self.path = os.path.abspath(os.fspath(path))
        self.check_interval = float(check_interval)
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._subscribers: Subscribers[bytes] = Subscribers(self.path)
        self._warned: set[str] = set()
        self._closed = False
        self._watcher: Optional[_Watcher] = None
        self._finalizer: Optional[weakref.finalize[..., CABundle]] = None
        self.watching = False
        sig = _signature(self.path)
        pem, ctx = load_ca_file(self.path)
        # The state, replaced as a whole, so readers need no lock.
        self._state: tuple[bytes, ssl.SSLContext, int] = (pem, ctx, 1)
        self._sig = sig
        self._next_check = self._clock() + self.check_interval
        if watch:
            # The hub keeps the registration (and re-arms) even when arming fails now.
            watcher = self._watcher = _Watcher(self)
            self.watching = HUB.watch(watcher, watch_targets(self.path))
            # Unwatch on close(), or when the bundle is collected without close().
            # The finalizer runs inside the garbage collector, maybe under a lock: defer the work.
            self._finalizer = weakref.finalize(self, HUB.defer, HUB.unwatch, watcher)
            self._finalizer.atexit = False
            self.refresh()  # a swap between the read and the watch raised no event

    # ------------------------------------------------------------------ public API -------
    @property
    def pem(self) -> bytes:
        """The PEM bytes of the current bundle (re-checked at most every ``check_interval``)."""
        self._maybe_check()
        return self._state[0]

    @property
    def generation(self) -> int:
        """1 for the bundle read at construction, +1 for each new valid bundle. Does not check
        the file."""
        return self._state[2]

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting the current bundle: the same object until the bundle
        changes (re-checked at most every ``check_interval``)."""
        self._maybe_check()
        return self._state[1]

    def refresh(self) -> bool:
        """Re-check the file now. Returns True if a new, valid bundle was loaded. A bad new file
        keeps the current bundle (one warning per distinct problem)."""
        if self._closed:
            return False
        with self._lock:
            self._next_check = self._clock() + self.check_interval
            sig = _signature(self.path)
            if sig is not None and sig == self._sig:
                return False
            try:
                pem, ctx = load_ca_file(self.path)
            except CAFileError as exc:
                # One warning per cause: a missing file is one cause, whether the link dangles
                # (mid-swap) or is gone.
                key = f"errno {exc.errno}" if exc.errno is not None else str(exc)
                if key not in self._warned:
                    self._warned.add(key)
                    log.warning(
                        "sa-token: %s; keeping the current CA bundle (generation %d)", exc, self._state[2]
                    )
                return False
            self._warned.clear()
            self._sig = sig
            old_pem, _, gen = self._state
            if pem == old_pem:
                return False
            self._state = (pem, ctx, gen + 1)
            log.info("sa-token: CA bundle %s changed (generation %d)", self.path, gen + 1)
        self._subscribers.notify(pem)
        return True

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(pem)`` after each change to a new valid bundle; returns a function that
        unsubscribes. Runs in the watcher thread or the thread that noticed: keep it short."""
        return self._subscribers.add(callback)

    def close(self) -> None:
        """Stop watching and re-checking; the current bundle stays usable. Idempotent."""
        self._closed = True
        self.watching = False
        if self._finalizer is not None and self._watcher is not None:
            self._finalizer.detach()
            HUB.unwatch(self._watcher)

    def __enter__(self) -> CABundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "closed" if self._closed else ("inotify" if self.watching else "polling")
        return f"CABundle(path={self.path!r}, generation={self._state[2]}, mode={mode})"

    # ------------------------------------------------------------------ internals --------
    def _maybe_check(self) -> None:
        if not self._closed and self._clock() >= self._next_check:
            self.refresh()

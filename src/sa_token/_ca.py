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
  as the tokens), on `CABundle.refresh`, and at most every ``check_interval`` seconds when
  `CABundle.pem` or `CABundle.ssl_context` is used (a ``stat``, and a read only if it changed);
* a new bundle that cannot be used (empty, garbage, unreadable, missing mid-swap) is ignored
  with one warning: the previous CA stays in force, as in client-go's CA rotation;
* a new, valid bundle gets a new context and a new `CABundle.generation`, and subscribers are
  called, so integrations can drop pooled connections that verified against the old CA.
"""

from __future__ import annotations

import itertools
import math
import os
import weakref
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional, Union

from . import _clock, _fmt, _log
from ._hub import HUB, HubFile
from ._locks import Notes, inside
from ._read import describe, read_bounded
from ._subscribers import Subscribers
from .errors import TokenFileError

if TYPE_CHECKING:
    import ssl  # imported when a bundle is first loaded: ssl costs ~12 ms of every import

__all__ = ["DEFAULT_CA_PATH", "DEFAULT_CHECK_INTERVAL", "CABundle", "CAFileError", "live_bundles"]


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
_KEYS = itertools.count(1)


class CAFileError(TokenFileError):
    """The CA file is missing, unreadable, empty, too large or not a PEM certificate bundle.

    A [`TokenFileError`][sa_token.TokenFileError] (and so an ``OSError``); ``path`` names the file.
    """


def load_ca_file(path: str) -> tuple[bytes, ssl.SSLContext]:
    """Read ``path`` and build a client ``SSLContext`` trusting exactly its certificates.

    Raises `CAFileError` naming the file and the cause."""
    import ssl  # here, not at the top: most imports of sa_token never load a CA bundle

    shown = _fmt.path(path)
    try:
        raw = read_bounded(path, MAX_CA_BYTES)
    except OSError as exc:
        raise describe(path, exc, kind="CA", error=CAFileError) from None
    if not raw.strip():
        raise CAFileError(f"CA file {shown} is empty", path=path, reason="empty")
    if b"-----BEGIN CERTIFICATE-----" not in raw:
        raise CAFileError(
            f"CA file {shown} contains no PEM certificate (no -----BEGIN CERTIFICATE----- line)",
            path=path,
            reason="malformed",
        )
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise CAFileError(
            f"CA file {shown} is not PEM: it contains non-ASCII bytes", path=path, reason="malformed"
        ) from None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=text)
    except (ssl.SSLError, ValueError) as exc:
        why = getattr(exc, "reason", None) or str(exc)
        raise CAFileError(
            f"CA file {shown} is not a valid PEM certificate bundle ({_fmt.text(why)})",
            path=path,
            reason="malformed",
        ) from None
    return raw, ctx


def _signature(path: str) -> Optional[tuple[int, int, int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def live_bundles() -> list[CABundle]:
    """Every open `CABundle` in the process (for the metrics collectors; no I/O)."""
    with HUB.lock:
        files = [f for f in HUB.files.values() if isinstance(f, _CAFile)]
    bundles = [f.bundle() for f in files]
    return [b for b in bundles if b is not None and not b._closed]


class _State(NamedTuple):
    """What readers of a bundle share. Replaced whole, under the bundle's lock."""

    pem: bytes
    context: ssl.SSLContext
    generation: int
    signature: Optional[tuple[int, int, int, int]]  # the file's (dev, inode, size, mtime) when read
    next_check: float  # clock time of the next re-check on use
    changed_at: float  # clock time this generation was loaded


class _CAFile(HubFile):
    """What the hub holds for a bundle: a weak reference, so that a bundle dropped without
    ``close()`` is released when collected. Also the bundle's lock, renewed after a fork."""

    def __init__(self, key: str, bundle: CABundle) -> None:
        super().__init__(key=key, path=bundle.path)
        self.bundle = weakref.ref(bundle)

    def refresh(self) -> None:
        bundle = self.bundle()
        if bundle is not None:
            bundle.refresh()

    def after_fork_in_child(self) -> None:
        super().after_fork_in_child()
        bundle = self.bundle()
        if bundle is not None:
            bundle._subscribers.after_fork_in_child()


class CABundle:
    """The current, valid CA bundle from a (projected) ``ca.crt``, and an ``SSLContext`` for it.

    ```python
    ca = CABundle("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
    ctx = ca.ssl_context()       # verify the API server; a new object after a CA rotation
    ```

    Args:
        path: The CA bundle file (default: the kube-api-access volume's ``ca.crt``).
        check_interval: Re-check the file at most this often (seconds) when `pem` or
            `ssl_context` is used (default 60). ``0`` checks on every use.
        watch: Also re-check on inotify events for the file's volume (default True).
        clock: A `time.time`-like function, for tests, as for `TokenSource`.

    The context trusts exactly the bundle's certificates (not the system store), verifies the
    hostname and is shared: do not modify it; build your own from `pem` if you need client
    certificates. Thread-safe and fork-safe. `close` stops watching.
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
        self._clock = clock
        self._subscribers: Subscribers[bytes] = Subscribers(self.path)
        self._warned: set[str] = set()
        self._closed = False
        self._watch = bool(watch)
        sig = _signature(self.path)
        pem, ctx = load_ca_file(self.path)
        now = self._now()
        self._state = _State(pem, ctx, 1, sig, now + self.check_interval, now)
        # Registered even without a watch: the hub's fork handler renews every lock it knows.
        key = f"ca:{next(_KEYS)}"  # one registration per bundle (ids are reused, counters are not)
        hub_file = self._hub_file = HUB.acquire(key, lambda: _CAFile(key, self), watch=self._watch)
        self._finalizer = weakref.finalize(self, HUB.release_later, hub_file, self._watch)
        self._finalizer.atexit = False
        if self._watch:
            self.refresh()  # a swap between the read and the watch raised no event

    # ------------------------------------------------------------------ public API -------
    @property
    def pem(self) -> bytes:
        """The PEM bytes of the current bundle (re-checked at most every ``check_interval``)."""
        self._maybe_check()
        return self._state.pem

    @property
    def generation(self) -> int:
        """1 for the bundle read at construction, +1 for each new valid bundle. Does not check
        the file."""
        return self._state.generation

    @property
    def changed_at(self) -> float:
        """When the current generation was loaded (``clock`` time): at construction, then at
        each change to a new valid bundle. Does not check the file."""
        return self._state.changed_at

    @property
    def watching(self) -> bool:
        """Whether inotify watches the file (else it is re-checked on use only)."""
        return not self._closed and self._watch and self._hub_file.watching

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting the current bundle: the same object until the bundle
        changes (re-checked at most every ``check_interval``)."""
        self._maybe_check()
        return self._state.context

    def refresh(self) -> bool:
        """Re-check the file now. Returns True if a new, valid bundle was loaded. A bad new file
        keeps the current bundle (one warning per distinct problem)."""
        if self._closed or inside():  # inside: a finalizer inside our own locked work
            return False
        now = self._now()  # before the lock: an injected clock never runs under it
        notes = Notes()
        changed = self._refresh(now, notes)
        notes.say()
        if changed:
            self._subscribers.notify(self._state.pem)
        return changed

    def _refresh(self, now: float, notes: Notes) -> bool:
        with self._hub_file.lock:
            state = self._state
            next_check = now + self.check_interval
            sig = _signature(self.path)
            if sig is not None and sig == state.signature:
                self._state = state._replace(next_check=next_check)
                return False
            try:
                pem, ctx = load_ca_file(self.path)
            except CAFileError as exc:
                self._state = state._replace(next_check=next_check)
                if exc.reason not in self._warned:  # one warning per cause
                    self._warned.add(exc.reason)
                    notes.add(
                        _log.WARNING,
                        "sa-token: %s; keeping the current CA bundle (generation %d)",
                        exc,
                        state.generation,
                    )
                return False
            self._warned.clear()
            if pem == state.pem:
                self._state = state._replace(signature=sig, next_check=next_check)
                return False
            self._state = _State(pem, ctx, state.generation + 1, sig, next_check, now)
            notes.add(
                _log.INFO,
                "sa-token: CA bundle %s changed (generation %d)",
                _fmt.path(self.path),
                state.generation + 1,
            )
        return True

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(pem)`` after each change to a new valid bundle; returns a function that
        unsubscribes. Callbacks run in a thread of the bundle's own, in order; what they raise is
        logged."""
        return self._subscribers.add(callback)

    def close(self) -> None:
        """Stop watching and re-checking; the current bundle stays usable. Idempotent, and safe
        from a finalizer (the release is then left to the watcher thread if need be)."""
        self._closed = True
        if self._finalizer.detach() is not None:
            HUB.release(self._hub_file, watch=self._watch)  # deferred if this thread holds the hub's lock

    def __enter__(self) -> CABundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "closed" if self._closed else ("inotify" if self.watching else "polling")
        return f"CABundle(path={self.path!r}, generation={self._state.generation}, mode={mode})"

    # ------------------------------------------------------------------ internals --------
    def _now(self) -> float:
        return _clock.now(self._clock)

    def _maybe_check(self) -> None:
        if not self._closed and self._now() >= self._state.next_check:
            self.refresh()

"""The issuer's signing keys: fetched once, shared, refreshed in the background, kept on error.

The rules (docs/verify.md, "The key cache"):

* one fetch at a time (`Flights`): 1000 concurrent first calls make one request;
* fresh for the answer's ``Cache-Control: max-age``, clamped to [`MIN_MAX_AGE`, `MAX_MAX_AGE`]
  (kube-apiserver sends 3600); after that the next call starts a refresh in a background
  thread and goes on with the keys it has;
* a ``kid`` that no key has causes at most one refetch per `KID_REFETCH_COOLDOWN`, counted
  from the last refetch such a miss caused (a key published just after start-up is found at
  once, a flood of random ``kid``s makes one request); tokens with known keys never wait;
* a failed fetch keeps the last good keys for `STALE_IF_ERROR` after they were fetched, and is
  tried again after a backoff (1 s doubling to 60 s), never remembered for good.

The state readers share is one immutable `_State`, replaced whole under the lock.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple, Optional

from sa_token import _fmt

from ._cache import Flights
from .errors import UnknownKeyError, VerifierUnavailableError

__all__ = ["KeyCache", "NeedsIO"]

# Clamp on max-age: never refetch more than once a minute (max-age=0 means 60 s), never keep keys
# unchecked for over an hour (kube-apiserver's own max-age: keys rotate on its schedule).
MIN_MAX_AGE, MAX_MAX_AGE = 60.0, 3600.0
# Without a Cache-Control max-age (some external issuers): Envoy's and panva/jose's default.
DEFAULT_MAX_AGE = 600.0
# An unknown kid refetches at most this often: go-oidc and panva/jose use 30 s.
KID_REFETCH_COOLDOWN = 30.0
# How long after a successful fetch its keys keep serving while refetches fail: a day covers an
# API server outage of a working day; signing keys rotate over weeks.
STALE_IF_ERROR = 24 * 3600.0
# Backoff after a failed fetch: 1 s doubling to 60 s (a down API server sees one try a minute).
RETRY_FIRST, RETRY_MAX = 1.0, 60.0
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)")


class NeedsIO(Exception):
    """Raised by a call that may not do I/O (the async fast path) when it would have to."""


class Keys(NamedTuple):
    by_kid: Mapping[str, tuple[Any, ...]]  # kid -> (kty, alg, public key)
    every: tuple[Any, ...]  # all keys, for tokens without a kid
    fetched_at: float
    fresh_until: float
    generation: int


class _State(NamedTuple):
    keys: Optional[Keys]
    retry_at: float  # no fetch before this (backoff after a failure)
    failures: int
    kid_refetch_at: float  # when an unknown kid last caused a refetch
    error: Optional[str]  # why the last fetch failed


def max_age(cache_control: Optional[str]) -> float:
    m = _MAX_AGE.search(cache_control or "")
    seconds = float(m.group(1)) if m else DEFAULT_MAX_AGE
    return min(MAX_MAX_AGE, max(MIN_MAX_AGE, seconds))


def parse_jwks(doc: object) -> tuple[dict[str, tuple[Any, ...]], tuple[Any, ...]]:
    """The usable keys of a JWKS document as (kty, alg or None, public key) (keys of unknown
    types are skipped, as the API server's clients do); ValueError when there are none."""
    import jwt

    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("the answer is not a JWKS document (no 'keys' list)")
    by_kid: dict[str, list[Any]] = {}
    every = []
    for entry in doc["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            jwk = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            continue
        alg = entry.get("alg")
        key = (entry.get("kty"), alg if isinstance(alg, str) else None, jwk.key)
        every.append(key)
        if isinstance(entry.get("kid"), str):
            by_kid.setdefault(entry["kid"], []).append(key)
    if not every:
        raise ValueError("the JWKS document has no usable signing key")
    return {k: tuple(v) for k, v in by_kid.items()}, tuple(every)


class KeyCache:
    """The key set of one issuer. ``fetch()`` returns (JWKS document, Cache-Control value) or
    raises `VerifierUnavailableError`; ``now`` is the verifier's wall clock."""

    def __init__(self, fetch: Callable[[], tuple[object, Optional[str]]], url: str) -> None:
        self._fetch, self.url = fetch, url
        self._lock = threading.Lock()
        self._flights = Flights()
        self._state = _State(None, -float("inf"), 0, -float("inf"), None)
        self._refreshing = False  # a background refresh is starting or running

    @property
    def generation(self) -> int:
        keys = self._state.keys
        return 0 if keys is None else keys.generation

    def keys_for(self, kid: Optional[str], now: float, io: bool) -> tuple[Any, ...]:
        """The keys a token with ``kid`` may be signed with (all of them without a kid)."""
        st = self._state
        keys = st.keys
        if keys is not None and now < keys.fetched_at + STALE_IF_ERROR:
            if now >= keys.fresh_until and now >= st.retry_at:
                self._refresh_in_background(now)
            found = keys.every if kid is None else keys.by_kid.get(kid)
            return found if found else self._after_miss(kid, now, io)
        if now < st.retry_at:
            raise VerifierUnavailableError(
                f"the issuer's keys ({self.url}) could not be fetched: {st.error}; "
                f"next try in {_fmt.duration(st.retry_at - now)}"
            )
        if not io:
            raise NeedsIO
        self._flights.run(None, lambda: self._refetch(now, kid_miss=False))
        if self._state.keys is None:
            raise VerifierUnavailableError(
                f"the issuer's keys ({self.url}) could not be fetched: {self._state.error}"
            )
        return self.keys_for(kid, now, io=False)

    def _after_miss(self, kid: Optional[str], now: float, io: bool) -> tuple[Any, ...]:
        """A kid no key has: one refetch, unless one was caused less than the cooldown ago."""
        st = self._state
        if now - st.kid_refetch_at < KID_REFETCH_COOLDOWN or now < st.retry_at:
            raise UnknownKeyError(self._unknown(kid))
        if not io:
            raise NeedsIO
        self._flights.run(None, lambda: self._refetch(now, kid_miss=True))
        keys = self._state.keys
        found = keys.by_kid.get(kid or "") if keys is not None else None
        if not found:
            raise UnknownKeyError(self._unknown(kid))
        return found

    def _unknown(self, kid: Optional[str]) -> str:
        shown = "no kid" if kid is None else f"kid {_fmt.text(kid, limit=80)!r}"
        return f"the issuer publishes no key for the token's {shown} ({self.url})"

    def _refetch(self, now: float, *, kid_miss: bool) -> None:
        """Fetch the keys (one at a time: the caller runs this in a flight)."""
        if kid_miss:
            with self._lock:
                self._state = self._state._replace(kid_refetch_at=now)
        try:
            doc, cache_control = self._fetch()
            by_kid, every = parse_jwks(doc)
        except (VerifierUnavailableError, ValueError) as exc:
            with self._lock:
                st = self._state
                delay = min(RETRY_MAX, RETRY_FIRST * 2**st.failures)
                self._state = st._replace(
                    retry_at=now + delay, failures=st.failures + 1, error=_fmt.text(exc)
                )
            return
        with self._lock:
            st = self._state
            keys = Keys(by_kid, every, now, now + max_age(cache_control), self.generation + 1)
            self._state = _State(keys, -float("inf"), 0, st.kid_refetch_at, None)

    def _refresh_in_background(self, now: float) -> None:
        with self._lock:
            if self._refreshing:
                return
            self._refreshing = True
        try:
            threading.Thread(
                target=self._background, args=(now,), name="sa-token-jwks-refresh", daemon=True
            ).start()
        except RuntimeError:  # no thread now (a pids limit): the next call tries again
            with self._lock:
                self._refreshing = False

    def _background(self, now: float) -> None:
        try:
            self._flights.run(None, lambda: self._refetch(now, kid_miss=False))
        except Exception:  # noqa: S110 - an outcome the state records (retry_at, error)
            pass
        finally:
            with self._lock:
                self._refreshing = False

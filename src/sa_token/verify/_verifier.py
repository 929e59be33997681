"""`TokenVerifier`: is this incoming projected token from who it says, for us, now?

The order of the checks is the guarantee that garbage is cheap: a cached verdict (a keyed
hash and a dict lookup); then shape, size, ``alg``, times and audience, with no I/O; the
issuer (discovered once); only then keys (JWKS) or the API server (TokenReview). Every
public call goes through `_checked`, which counts the outcome and raises from a fresh frame:
the token is held by a `Presented` (whose ``repr`` hides it), never by a local string.
"""

from __future__ import annotations

import copy
import os
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Optional, Union
from urllib.parse import urlsplit

from sa_token import _clock, _observe
from sa_token._ca import CABundle
from sa_token._hub import at_fork_in_child
from sa_token._incluster import not_in_cluster_reason, service_url
from sa_token._source import TokenSource, _seconds, require_source
from sa_token.errors import ConfigurationError

from ._cache import Flights, Verdicts
from ._discovery import Discovery
from ._http import DEFAULT_TIMEOUT, Endpoint, refused
from ._identity import Identity, from_claims
from ._jwks import KeyCache, NeedsIO
from ._jwt import Parsed, Presented, check_issuer, check_times, matched_audiences, parse
from ._review import Reviewer
from .errors import BadSignatureError, TokenRefusedError, VerificationError, VerifierUnavailableError

__all__ = ["DEFAULT_LEEWAY", "REVIEW_TTL", "TokenVerifier"]

# Seconds of clock skew allowed on exp/nbf/iat: the API server's own (go-jose DefaultLeeway).
DEFAULT_LEEWAY = 60.0
# TokenReview answers, positive and negative, are reused this long (never past the token's exp):
# the API server's delegating authenticator's CacheTTL (k8s.io/apiserver, 10 s).
REVIEW_TTL = 10.0
JWKS_PATH = "/openid/v1/jwks"
METHODS = ("jwks", "tokenreview")
_LIVE: weakref.WeakSet[TokenVerifier] = weakref.WeakSet()
_ALGORITHMS: dict[str, Any] = {}
_FAMILY = {"RS": "RSA", "PS": "RSA", "ES": "EC"}


def _audiences(audience: Union[str, Iterable[str]]) -> tuple[str, ...]:
    auds = (audience,) if isinstance(audience, str) else tuple(audience)
    if not auds or not all(isinstance(a, str) and a for a in auds):
        raise ValueError(f"audience must be a non-empty string or a sequence of them, not {audience!r}")
    return auds


def _api_server(given: Optional[str], environ: Optional[Mapping[str, str]]) -> str:
    """``given``, else the pod's API server from the service environment variables."""
    if given is not None:
        return given
    env = os.environ if environ is None else environ
    reason = not_in_cluster_reason(env)
    if reason is not None:
        raise ConfigurationError(f"TokenVerifier needs the API server: pass api_server=, or {reason}")
    return service_url(env)


def _keys_endpoint(jwks_url: str, api: Optional[Endpoint], timeout: float) -> tuple[Endpoint, str]:
    """Where the keys are fetched: the API server (with its bearer and CA) when ``jwks_url`` is
    on it, else the URL's host with no bearer and the system trust store; and the path there."""
    u = urlsplit(jwks_url)
    full = (u.path or "/") + (f"?{u.query}" if u.query else "")
    if api is not None and api.origin(jwks_url):
        return api, jwks_url[len(api.url) :] if jwks_url.startswith(api.url) else full
    return Endpoint(f"{u.scheme}://{u.netloc}", bearing=False, source=None, ca=None, timeout=timeout), full


def _algorithm(name: str) -> Any:
    if not _ALGORITHMS:
        try:
            from jwt.algorithms import get_default_algorithms
        except ImportError as exc:
            raise ImportError(
                "TokenVerifier(method='jwks') checks signatures with pyjwt and cryptography: "
                "pip install 'sa-token[verify]'"
            ) from exc
        _ALGORITHMS.update(get_default_algorithms())
    return _ALGORITHMS[name]


class TokenVerifier:
    """Verifies incoming projected ServiceAccount tokens; see docs/verify.md.

    ```python
    verifier = TokenVerifier(audience="payments")            # JWKS of the pod's cluster
    identity = verifier.verify(token)                        # or: await verifier.averify(token)
    ```

    Args:
        audience: The audience (or audiences) a token must carry one of.
        method: ``"jwks"``: the signature is checked here with the issuer's keys (fast, local;
            a deleted pod's token passes until it expires). ``"tokenreview"``: the API server
            decides (refuses tokens of deleted pods and ServiceAccounts).
        api_server: The API server; default ``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``.
        issuer: The ``iss`` tokens must have; default: discovered from the API server's
            ``/.well-known/openid-configuration``.
        jwks_url: Where the keys are; default ``{api_server}/openid/v1/jwks`` (not the discovery
            document's ``jwks_uri``, which names the API server's external address). A URL on
            another host (a cloud's public issuer) is fetched without the verifier's token.
        source: The `TokenSource` of the verifier's own bearer; default the pod's token.
        ca: The CA bundle (a path or a `CABundle`) for the API server; default the pod's
            ``ca.crt``, hot-reloaded.
        leeway: Seconds of clock skew allowed on ``exp``/``nbf``/``iat`` (default 60, as the
            API server).
        timeout: Seconds each request may take (default 10).
        clock: A `time.time`-like function, for tests.
        environ: The environment to read the API server's address from (default `os.environ`).

    Thread-safe; `averify` never blocks the event loop; fork-safe (a child starts with empty
    caches and a new hash key). Nothing is fetched before the first call: the constructor never
    fails because the API server is down (it fails at once on a missing setting).
    """

    def __init__(
        self,
        *,
        audience: Union[str, Iterable[str]],
        method: str = "jwks",
        api_server: Optional[str] = None,
        issuer: Optional[str] = None,
        jwks_url: Optional[str] = None,
        source: Optional[TokenSource] = None,
        ca: Union[str, os.PathLike[str], CABundle, None] = None,
        leeway: float = DEFAULT_LEEWAY,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Optional[Callable[[], float]] = None,
        environ: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.audiences = _audiences(audience)
        if method not in METHODS:
            raise ValueError(f"method must be 'jwks' or 'tokenreview', not {method!r}")
        if method == "jwks":
            _algorithm("RS256")  # pyjwt and cryptography, or the install hint now, not at the first token
        self.method, self._clock = method, clock
        self.leeway, seconds = _seconds("leeway", leeway, zero=True), _seconds("timeout", timeout, zero=False)
        source = require_source(source, "TokenVerifier(source=...)")
        needed = method == "tokenreview" or issuer is None or jwks_url is None
        self.api_server = api_server = _api_server(api_server, environ) if needed else api_server
        self._api = (
            None
            if api_server is None
            else Endpoint(api_server, bearing=True, source=source, ca=ca, timeout=seconds)
        )
        self.jwks_url = jwks_url or f"{(api_server or '').rstrip('/')}{JWKS_PATH}"
        self._keys_at, self._keys_path = _keys_endpoint(self.jwks_url, self._api, seconds)
        self._issuer_given = issuer
        self._closed = False
        self._reset()
        _LIVE.add(self)

    def _reset(self) -> None:
        """Fresh caches: at construction and in a forked child (the parent's hash key and
        verdicts stay with the parent)."""
        self._verdicts: Verdicts[Identity] = Verdicts()
        self._flights = Flights()
        self._discovery = Discovery(self._api, self._issuer_given)
        self._keys = KeyCache(self._fetch_keys, self.jwks_url) if self.method == "jwks" else None
        self._reviewer = (
            Reviewer(self._api, self.audiences) if self._api and self.method == "tokenreview" else None
        )

    # ------------------------------------------------------------------ public API -------
    def verify(self, token: str) -> Identity:
        """The `Identity` of a valid token, else a `VerificationError` saying why (a
        `VerifierUnavailableError` when the verifier cannot decide). May do I/O (at most the
        request timeout); O(1) for a token seen before."""
        presented = Presented(token)
        del token  # from here on only `presented` (repr hidden) holds it
        return self.verify_presented(presented)

    async def averify(self, token: str) -> Identity:
        """`verify` for asyncio: answers from memory on the loop; any request runs in a worker
        thread, so the event loop never blocks."""
        presented = Presented(token)
        del token
        return await self.averify_presented(presented)

    def verify_presented(self, presented: Presented) -> Identity:
        """`verify` for a token already wrapped (the server integrations)."""
        return self._checked(lambda: self._verify(presented, io=True))

    async def averify_presented(self, presented: Presented) -> Identity:
        """`averify` for a token already wrapped (the server integrations)."""
        try:
            return self._checked(lambda: self._verify(presented, io=False))
        except NeedsIO:
            pass
        import asyncio

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._checked, lambda: self._verify(presented, io=True))

    def close(self) -> None:
        """Close the token source and CA bundle the verifier made. Idempotent."""
        self._closed = True
        _LIVE.discard(self)
        self._keys_at.close()
        if self._api is not None:
            self._api.close()

    def __enter__(self) -> TokenVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        auds = list(self.audiences)
        return f"TokenVerifier(method={self.method!r}, audience={auds!r}, issuer={self._discovery.issuer!r})"

    # ------------------------------------------------------------------ the checks -------
    def _checked(self, check: Callable[[], Identity]) -> Identity:
        if self._closed:
            raise RuntimeError("this TokenVerifier is closed")
        error: Optional[VerificationError] = None
        try:
            identity = check()
        except VerificationError as exc:
            error = exc
        if error is None:
            _observe.count_event("sa_token_verifications", (self.method, "ok"))
            return identity
        _observe.count_event("sa_token_verifications", (self.method, error.reason))
        raise error.with_traceback(None)  # outside the handler: no frame below this one is kept

    def _now(self) -> float:
        return _clock.now(self._clock)

    def _verify(self, presented: Presented, io: bool) -> Identity:
        now = self._now()
        digest = b""
        if isinstance(presented.value, str):
            digest = self._verdicts.digest(presented.value)
            answer = self._verdicts.get(digest, now, self._keys.generation if self._keys else 0)
            if answer is not None:
                _observe.count_event("sa_token_verify_cache_hits", (self.method,))
                if isinstance(answer, VerificationError):
                    raise copy.copy(answer)  # a fresh instance: no traceback shared between callers
                return answer
        parsed = parse(presented)
        check_times(parsed, now, self.leeway)
        matched = matched_audiences(parsed, self.audiences)
        check_issuer(parsed, self._discovery.issuer_for(now, io))
        if self._keys is not None:
            return self._by_signature(parsed, matched, digest, now, io)
        if not io:
            raise NeedsIO
        return self._flights.run(digest, lambda: self._by_review(presented, parsed, digest, now))

    def _by_signature(
        self, parsed: Parsed, matched: tuple[str, ...], digest: bytes, now: float, io: bool
    ) -> Identity:
        assert self._keys is not None
        keys = self._keys.keys_for(parsed.kid, now, io)
        algorithm = _algorithm(parsed.alg)
        family = _FAMILY[parsed.alg[:2]]
        for kty, alg, key in keys:
            if (
                kty == family
                and alg in (None, parsed.alg)
                and algorithm.verify(parsed.signing_input, key, parsed.signature)
            ):
                identity = from_claims(parsed.claims, matched, "jwks")
                self._verdicts.put(digest, parsed.exp + self.leeway, identity, self._keys.generation)
                return identity
        raise BadSignatureError(
            f"the token's signature does not verify with the issuer's keys ({self.jwks_url})"
        )

    def _by_review(self, presented: Presented, parsed: Parsed, digest: bytes, now: float) -> Identity:
        assert self._reviewer is not None
        until = min(now + REVIEW_TTL, parsed.exp)
        try:
            identity = self._reviewer.review(presented, parsed)
        except TokenRefusedError as exc:
            _observe.count_event("sa_token_token_reviews", ("refused",))
            self._verdicts.put(digest, until, copy.copy(exc))  # a copy: the raised one gets a traceback
            raise
        except VerifierUnavailableError:
            _observe.count_event("sa_token_token_reviews", ("error",))  # errors are never cached
            raise
        _observe.count_event("sa_token_token_reviews", ("authenticated",))
        self._verdicts.put(digest, until, identity)
        return identity

    # ------------------------------------------------------------------ fetching ---------
    def _fetch_keys(self) -> tuple[object, Optional[str]]:
        try:
            response = self._keys_at.request("GET", self._keys_path, "fetching the issuer's keys")
            if response.status != 200:
                raise refused(response, "fetching the issuer's keys", self.jwks_url)
        except VerifierUnavailableError:
            _observe.count_event("sa_token_jwks_fetches", ("failure",))
            raise
        _observe.count_event("sa_token_jwks_fetches", ("success",))
        return response.body, response.headers.get("Cache-Control")


def _after_fork_in_child() -> None:
    for verifier in list(_LIVE):
        for endpoint in (verifier._keys_at, verifier._api):
            if endpoint is not None:
                endpoint.after_fork()
        verifier._reset()


at_fork_in_child(_after_fork_in_child)

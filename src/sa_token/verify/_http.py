"""The verifier's own requests: discovery, keys and TokenReviews, with its current bearer.

Every request to the API server carries the verifier's *current* token from its
`TokenSource` (re-read after a 401, once, by compare-and-swap) and trusts the *current* CA
from its `CABundle`; both are made at first use, so a verifier can be built before the
ServiceAccount volume is readable. A URL on another host (``jwks_url`` of a cloud's public
issuer) gets no bearer and the system's trust store. Whatever goes wrong becomes a
`VerifierUnavailableError` raised from a fresh frame: no traceback of ``http.client`` (whose
frames hold the request's headers and body) is kept.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import threading
from typing import Any, Callable, Optional, Union
from urllib.parse import urlsplit

from sa_token._ca import DEFAULT_CA_PATH, CABundle
from sa_token._cloud import scrub
from sa_token._flow import bearer, scrubbed
from sa_token._paths import DEFAULT_TOKEN_PATH
from sa_token._source import TokenSource
from sa_token._token import Token
from sa_token.errors import TokenError

from .errors import VerifierUnavailableError

__all__ = ["Endpoint", "Response"]

# Seconds a request to the API server may take: kube-apiserver's delegating authenticator's
# TokenRequestTimeout (k8s.io/apiserver options/authentication.go).
DEFAULT_TIMEOUT = 10.0
# A JWKS document or a TokenReview is a few KiB; refuse to read more than this from a server.
MAX_RESPONSE_BYTES = 1 << 20
_AUTHORIZATION = "Authorization"


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: http.client.HTTPMessage, body: Any) -> None:
        self.status, self.headers, self.body = status, headers, body


class Endpoint:
    """An HTTP(S) origin the verifier talks to, with its bearer (``source``) and CA (``ca``)
    when it is the API server (``bearing``)."""

    def __init__(
        self,
        base_url: str,
        *,
        bearing: bool,
        source: Optional[TokenSource],
        ca: Union[str, os.PathLike[str], CABundle, None],
        timeout: float,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("https", "http") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.url = base_url.rstrip("/")
        self._https = url.scheme == "https"
        self._host, self._port = url.hostname, url.port
        self._prefix = url.path.rstrip("/")
        self.bearing = bearing
        self.timeout = timeout
        self._lock = threading.Lock()
        self._source, self._own_source = source, False
        self._ca: Optional[CABundle] = ca if isinstance(ca, CABundle) else None
        self._ca_path = None if isinstance(ca, CABundle) else os.fspath(ca or DEFAULT_CA_PATH)
        self._own_ca = False
        self._system: Optional[ssl.SSLContext] = None  # the system trust store, for other hosts

    # Made at first use, outside the lock (a constructor may log: no user code under our lock);
    # a thread that loses the race closes its own.
    def _bearer_source(self) -> TokenSource:
        source = self._source
        if source is not None:
            return source
        made = TokenSource(DEFAULT_TOKEN_PATH)
        with self._lock:
            if self._source is None:
                self._source, self._own_source = made, True
                return made
            source = self._source
        made.close()
        return source

    def _context(self) -> ssl.SSLContext:
        if not self.bearing:
            if self._system is None:
                self._system = ssl.create_default_context()
            return self._system
        ca = self._ca
        if ca is None:
            assert self._ca_path is not None
            made = CABundle(self._ca_path)
            with self._lock:
                if self._ca is None:
                    self._ca, self._own_ca, ca = made, True, made
                else:
                    ca = self._ca
            if ca is not made:
                made.close()
        return ca.ssl_context()

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (a parent's thread may have held it at the fork)."""
        self._lock = threading.Lock()

    def origin(self, url: str) -> bool:
        """Whether ``url`` is on this endpoint's scheme, host and port."""
        u = urlsplit(url)
        return (u.scheme == "https") == self._https and u.hostname == self._host and u.port == self._port

    def request(
        self, method: str, path: str, what: str, body: Optional[Callable[[], bytes]] = None
    ) -> Response:
        """``method path`` (under the base URL) as JSON; the answer, whatever its status.
        ``body`` makes the request body when it is sent (so no frame here holds it)."""
        failure: Optional[VerifierUnavailableError] = None
        try:
            held = self._bearer_source().current() if self.bearing else None
            response = self._send(method, path, held, body)
            if response.status == 401 and held is not None and self._bearer_source().invalidate_if(held):
                response = self._send(method, path, self._bearer_source().current(), body)
            return response
        except TokenError as exc:  # the verifier's own token or CA file
            failure = VerifierUnavailableError(f"{what}: the verifier's own token or CA is unusable: {exc}")
        except Exception as exc:  # OSError, HTTPException, a bad answer: never a trace from http.client
            failure = VerifierUnavailableError(
                f"{what}: cannot reach {self.url}: {scrub(exc) or type(exc).__name__}"
            )
        raise failure  # outside the handler: no context, no traceback of http.client

    def _send(
        self, method: str, path: str, held: Optional[Token], body: Optional[Callable[[], bytes]]
    ) -> Response:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        kwargs: dict[str, Any] = {"context": self._context()} if self._https else {}
        conn = cls(self._host, self._port, timeout=self.timeout, **kwargs)
        headers = {"Accept": "application/json", "User-Agent": "sa-token-verify"}
        with scrubbed(headers, _AUTHORIZATION):
            if held is not None:
                headers[_AUTHORIZATION] = bearer(held)
            if body is not None:
                headers["Content-Type"] = "application/json"
            try:
                conn.request(
                    method, self._prefix + path, body=None if body is None else body(), headers=headers
                )
                resp = conn.getresponse()
                raw = resp.read(MAX_RESPONSE_BYTES + 1)
            finally:
                conn.close()
                headers.pop(_AUTHORIZATION, None)
        if len(raw) > MAX_RESPONSE_BYTES:
            raise ValueError(f"the answer is larger than {MAX_RESPONSE_BYTES} bytes")
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        return Response(resp.status, resp.headers, doc)

    def close(self) -> None:
        with self._lock:
            source, self._source = (self._source if self._own_source else None), None
            ca, self._ca = (self._ca if self._own_ca else None), None
        if source is not None:
            source.close()
        if ca is not None:
            ca.close()


def refused(response: Response, what: str, url: str) -> VerifierUnavailableError:
    """The error for an answer that is not a success: the verifier cannot decide."""
    message = response.body.get("message") if isinstance(response.body, dict) else None
    said = f": {scrub(message)}" if isinstance(message, str) and message else ""
    if response.status in (401, 403):
        hint = (
            "the API server refused the verifier's own token"
            if response.status == 401
            else "the verifier's ServiceAccount lacks the RBAC permission"
        )
        return VerifierUnavailableError(
            f"{what} at {url}: HTTP {response.status}{said} ({hint}; see docs/verify.md)"
        )
    return VerifierUnavailableError(f"{what} at {url}: HTTP {response.status}{said}")

"""requests integration: ``auth=TokenAuth(source)`` sends the current projected token.

```python
from sa_token import TokenSource
from sa_token.requests import TokenAuth
session = requests.Session()
session.auth = TokenAuth(TokenSource("/var/run/secrets/tokens/vault"), hosts=["vault.vault.svc:8200"])
session.get("https://vault.vault.svc:8200/v1/sys/health")
```

Header, ``hosts`` and 401 rules: `sa_token._auth`.
[`CAReloadingAdapter`][sa_token.requests.CAReloadingAdapter] follows a ``ca.crt`` that the kubelet rotates.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Optional

try:
    from requests.adapters import DEFAULT_POOLBLOCK, HTTPAdapter
    from requests.auth import AuthBase
    from requests.cookies import extract_cookies_to_jar
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "sa_token.requests needs the requests package: pip install 'sa-token[requests]'"
    ) from exc

from ._auth import AUTHORIZATION, MAX_401_RETRIES, UNAUTHORIZED, BearerAuth, bearer

if TYPE_CHECKING:
    import ssl

    from requests import PreparedRequest, Response

    from ._ca import CABundle

__all__ = ["CAReloadingAdapter", "TokenAuth"]

_IN_MEMORY = -1  # body position marker: bytes, str or no body, replayable as they are


class TokenAuth(BearerAuth, AuthBase):
    """Attach ``Authorization: Bearer <token>`` from a [`TokenSource`][sa_token.TokenSource].

    * A request that already has an ``Authorization`` header is sent unchanged.
    * ``hosts``: only requests to these hosts get the token (``"host"`` matches the scheme's
      default port only, ``"host:port"`` that port); default: every request.
    * After a 401 the token is re-read; if it changed, the request is sent once more (bytes,
      str and seekable file bodies are replayed; a generator or other one-shot body is not,
      and the 401 is returned). The first response is in ``response.history``.

    One instance can be shared by any number of threads and sessions: each request's retry
    state lives in its own response hook.
    """

    def __call__(self, r: PreparedRequest) -> PreparedRequest:
        if not self.applies(r.url or "", AUTHORIZATION in r.headers):
            return r
        started = self.started()
        token = self.source.token()
        r.headers[AUTHORIZATION] = bearer(token)
        r.hooks["response"].append(_RetryOn401(self, token, started, _body_position(r.body)))
        return r


class _RetryOn401:
    """The response hook of one request: its token, start time and body position.

    The hook travels with ``PreparedRequest.copy()`` onto redirected requests; it acts only if
    the request that got the 401 still carried our token (requests drops the header on a
    redirect to another host or port), and at most `MAX_401_RETRIES` times per request.
    """

    def __init__(self, auth: TokenAuth, sent: str, started: float, body_pos: Optional[int]) -> None:
        self.auth = auth
        self.sent = sent
        self.started = started
        self.body_pos = body_pos
        self.retries_left = MAX_401_RETRIES

    def __repr__(self) -> str:
        return f"<sa_token.requests 401 hook for {self.auth!r}>"

    def __call__(self, r: Response, **kwargs: Any) -> Response:
        prep = r.request
        if (
            r.status_code != UNAUTHORIZED
            or self.retries_left <= 0
            or not self.auth.carried_ours(prep.url or "", prep.headers.get(AUTHORIZATION), self.sent)
        ):
            return r
        if not _rewind(prep.body, self.body_pos):
            self.auth.source.invalidate(older_than=self.started)  # the next request re-reads
            return r
        token = self.auth.fresh_token(self.sent, self.started)
        if token is None:
            return r
        self.retries_left -= 1
        # As HTTPDigestAuth.handle_401: release the connection, copy, resend on the same adapter.
        r.content  # noqa: B018 - drain, so the connection can be reused
        r.close()
        retry = prep.copy()
        jar = retry._cookies  # type: ignore[attr-defined]
        extract_cookies_to_jar(jar, prep, r.raw)  # type: ignore[no-untyped-call]
        retry.prepare_cookies(jar)
        retry.headers[AUTHORIZATION] = bearer(token)
        resent: Response = r.connection.send(retry, **kwargs)
        resent.history.append(r)
        resent.request = retry
        return resent


def _body_position(body: object) -> Optional[int]:
    """Where a seekable body starts (to rewind it for a retry); ``_IN_MEMORY`` for bodies that
    replay as they are; ``None`` if the body can be read only once."""
    if body is None or isinstance(body, (bytes, str)):
        return _IN_MEMORY
    seekable = getattr(body, "seekable", None)
    tell = getattr(body, "tell", None)
    if tell is None or getattr(body, "seek", None) is None:
        return None
    try:
        if seekable is not None and not seekable():
            return None
        pos = tell()
    except (OSError, ValueError):
        return None
    return pos if isinstance(pos, int) else None


def _rewind(body: object, pos: Optional[int]) -> bool:
    if pos == _IN_MEMORY:
        return True
    if pos is None:
        return False
    try:
        body.seek(pos)  # type: ignore[attr-defined]
    except (OSError, ValueError):
        return False
    return True


class CAReloadingAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` that verifies servers against a [`CABundle`][sa_token.CABundle] and follows
    its rotations: when the bundle changes, new connections use the new CA and the pooled ones,
    verified against the old CA, are closed (idle ones at once, busy ones when released).

    ```python
    ca = CABundle("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
    session.mount("https://", CAReloadingAdapter(ca))
    ```

    It trusts exactly the bundle (not certifi, not ``REQUESTS_CA_BUNDLE``); a ``verify=<path>``
    is ignored. ``verify=False`` and client certificates (``cert=``) are refused with a
    ``ValueError``: they would change the bundle's shared ``SSLContext``; mount a plain
    ``HTTPAdapter`` for those hosts. Other keyword arguments go to ``HTTPAdapter``.
    """

    def __init__(self, ca: CABundle, **kwargs: Any) -> None:
        self.ca = ca
        self._ca_lock = threading.Lock()
        self._ssl_context: ssl.SSLContext = ca.ssl_context()
        super().__init__(**kwargs)

    def __repr__(self) -> str:
        return f"CAReloadingAdapter({self.ca!r})"

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = DEFAULT_POOLBLOCK, **pool_kwargs: Any
    ) -> None:
        self._pool_args = (connections, maxsize, block, dict(pool_kwargs))
        pool_kwargs["ssl_context"] = self._ssl_context
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        proxy_kwargs["ssl_context"] = self._ssl_context
        return super().proxy_manager_for(proxy, **proxy_kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:  # noqa: ARG002
        # HTTPAdapter would point the pool at certifi (or a verify= path), and urllib3 would load
        # it into the bundle's shared context: verification must come from the context alone.
        if verify is False or cert:
            raise ValueError(
                "CAReloadingAdapter verifies servers with its CA bundle: verify=False and client "
                "certificates (cert=) are not supported; mount a plain HTTPAdapter for them"
            )
        conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = None
        conn.ca_cert_dir = None

    def send(self, request: PreparedRequest, *args: Any, **kwargs: Any) -> Response:
        self._follow_ca()
        response: Response = super().send(request, *args, **kwargs)
        return response

    def _follow_ca(self) -> None:
        ctx = self.ca.ssl_context()  # the same object until the bundle changes
        if ctx is self._ssl_context:
            return
        with self._ca_lock:
            if ctx is self._ssl_context:
                return
            old_pools, old_proxies = self.poolmanager, dict(self.proxy_manager)
            self._ssl_context = ctx
            connections, maxsize, block, pool_kwargs = self._pool_args
            self.init_poolmanager(connections, maxsize, block, **pool_kwargs)
            self.proxy_manager.clear()
        # urllib3 closes idle connections now and in-use ones when they are returned.
        old_pools.clear()
        for manager in old_proxies.values():
            manager.clear()

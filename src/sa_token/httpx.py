"""httpx integration: ``auth=TokenAuth(source)`` for ``httpx.Client`` and ``httpx.AsyncClient``.

```python
from sa_token import TokenSource
from sa_token.httpx import TokenAuth

auth = TokenAuth(TokenSource("/var/run/secrets/tokens/vault"), hosts=["vault.vault.svc:8200"])
httpx.get("https://vault.vault.svc:8200/v1/sys/health", auth=auth)
async with httpx.AsyncClient(auth=auth) as client:
    await client.get("https://vault.vault.svc:8200/v1/sys/health")
```

Header, ``hosts`` and 401 rules: `sa_token._flow` (both flows below only drive it).
[`CAReloadingTransport`][sa_token.httpx.CAReloadingTransport] and
[`AsyncCAReloadingTransport`][sa_token.httpx.AsyncCAReloadingTransport] follow a ``ca.crt``
that the kubelet rotates.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Iterable
from typing import TYPE_CHECKING, Optional, Union

try:
    import httpx
    from anyio import to_thread  # an httpx dependency
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("sa_token.httpx needs the httpx package: pip install 'sa-token[httpx]'") from exc

from ._flow import AUTHORIZATION, UNAUTHORIZED, Attempt, BearerFlow, Reply, bearer
from ._httpx_ca import AsyncCAReloadingTransport, CAReloadingTransport

if TYPE_CHECKING:

    from ._source import TokenSource

__all__ = ["AsyncCAReloadingTransport", "CAReloadingTransport", "TokenAuth"]


class TokenAuth(httpx.Auth):
    """Attach ``Authorization: Bearer <token>`` from a [`TokenSource`][sa_token.TokenSource].

    * A request that already has an ``Authorization`` header (also from the client's default
      headers) is sent unchanged.
    * ``hosts``: only requests to these hosts get the token (``"host"`` matches the scheme's
      default port only, ``"host:port"`` that port); default: every request.
    * After a 401 the token is re-read; if it changed, the request is sent once more. Only a
      body held in memory (``content=`` bytes or str, ``data=``, ``json=``, none) is replayed;
      after a streaming body (an iterator, a file, a multipart upload with files) the 401 is
      returned. The first response is in ``response.history``.

    The async flow never blocks the event loop: when the token must be read from the file, the
    read runs in a worker thread (``anyio.to_thread``, so asyncio and trio both work). Safe to
    share between threads, clients and tasks: all per-request state lives in the flow.
    """

    def __init__(self, source: TokenSource, *, hosts: Union[str, Iterable[str], None] = None) -> None:
        self.flow = BearerFlow(source, hosts=hosts, client="httpx", what="sa_token.httpx.TokenAuth()")

    @property
    def source(self) -> TokenSource:
        return self.flow.source

    def __repr__(self) -> str:
        return f"sa_token.httpx.TokenAuth({self.flow!r})"

    def _attempt(self, request: httpx.Request) -> Optional[Attempt]:
        return self.flow.attempt(
            None if self.flow.hosts is None else str(request.url),  # None: every host is allowed
            has_authorization=AUTHORIZATION in request.headers,
            replayable=lambda: _replayable(request),
        )

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        attempt = self._attempt(request)
        held = attempt.step() if attempt is not None else None
        if attempt is None or held is None:
            yield request
            return
        while held is not None:
            request.headers[AUTHORIZATION] = bearer(held)
            response = yield request
            if response.status_code != UNAUTHORIZED:
                return  # the answer stands: nothing for the flow to do
            held = attempt.step(_reply(response))

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        attempt = self._attempt(request)
        held = await attempt.astep(to_thread=to_thread.run_sync) if attempt is not None else None
        if attempt is None or held is None:
            yield request
            return
        while held is not None:
            request.headers[AUTHORIZATION] = bearer(held)
            response = yield request
            if response.status_code != UNAUTHORIZED:
                return
            held = await attempt.astep(_reply(response), to_thread=to_thread.run_sync)


def _reply(response: httpx.Response) -> Reply:
    last = response.request  # after redirects, the redirected request
    return Reply(str(last.url), last.headers.get(AUTHORIZATION))


def _replayable(request: httpx.Request) -> bool:
    """Whether the body is in memory, so sending the request again sends the same bytes."""
    try:
        request.content  # noqa: B018 - raises RequestNotRead for a streaming body
    except httpx.RequestNotRead:
        return False
    return True

"""aiohttp integration: a client middleware (aiohttp >= 3.12) that sends the current projected token.

```python
from sa_token import TokenSource
from sa_token.aiohttp import TokenMiddleware

source = TokenSource("/var/run/secrets/tokens/api", audience="api.internal")
async with aiohttp.ClientSession(middlewares=(TokenMiddleware(source, hosts=["api.internal"]),)) as s:
    async with s.get("https://api.internal/v1/things") as resp:
        ...
```

Header, ``hosts`` and 401 rules: `sa_token._flow` (this module only drives it). Unlike
requests and httpx, aiohttp runs a middleware for every hop of a redirect chain, each as a
request of its own, and tells it nothing about the hops before. So here the rule for redirects
is the ``hosts`` rule, applied to every hop. Without ``hosts=``, the token goes only to the
origin (scheme, host, port) of the first request the middleware handles, like aiohttp's own
``DigestAuthMiddleware``: a redirect to another origin carries no token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Optional, Union

try:
    from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, hdrs
    from aiohttp.payload import Payload
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "sa_token.aiohttp needs the aiohttp package (>= 3.12): pip install 'sa-token[aiohttp]'"
    ) from exc

from ._flow import UNAUTHORIZED, BearerFlow, Reply, bearer

if TYPE_CHECKING:
    from yarl import URL

    from ._source import TokenSource

__all__ = ["TokenMiddleware"]

log = logging.getLogger("sa_token")


class TokenMiddleware:
    """An aiohttp client middleware that attaches ``Authorization: Bearer <token>`` from a
    [`TokenSource`][sa_token.TokenSource]; pass it in ``ClientSession(middlewares=...)`` or
    per request.

    * A request that already has an ``Authorization`` header (its own, or the session's
      default headers, or ``auth=``) is sent unchanged.
    * ``hosts``: only requests to these hosts get the token (``"host"`` matches the scheme's
      default port only, ``"host:port"`` that port). Default: the origin of the first request
      this middleware handles (see the module documentation); give ``hosts`` when one session
      talks to several services.
    * After a 401 the token is re-read; if it changed, the request is sent once more, unless
      its body could be read only once (an async generator, a stream): then the 401 is returned
      and the next request reads the file again. Bytes, strings, JSON, form data and files are
      replayed by aiohttp itself.

    Never blocks the event loop: a due file read (and the lock wait after a 401) runs in a
    worker thread (``asyncio.to_thread``). Safe to share between sessions and tasks.
    """

    def __init__(self, source: TokenSource, *, hosts: Union[str, Iterable[str], None] = None) -> None:
        what = "sa_token.aiohttp.TokenMiddleware()"
        self.flow = BearerFlow(source, hosts=hosts, client="aiohttp", what=what)
        self._origin: Optional[tuple[str, Optional[str], Optional[int]]] = None
        self._lock = threading.Lock()

    @property
    def source(self) -> TokenSource:
        return self.flow.source

    def __repr__(self) -> str:
        return f"sa_token.aiohttp.TokenMiddleware({self.flow!r})"

    async def __call__(self, req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        url = req.url
        attempt = None
        if hdrs.AUTHORIZATION not in req.headers and self._allows(url):
            attempt = self.flow.attempt(None, replayable=lambda: _replayable(req))
        if attempt is None:
            return await handler(req)
        held = attempt.start_nowait() or await attempt.astep(to_thread=asyncio.to_thread)
        while True:
            assert held is not None
            req.headers[hdrs.AUTHORIZATION] = bearer(held)
            resp = await handler(req)
            if resp.status != UNAUTHORIZED:
                return resp  # the attempt ends here
            held = await attempt.astep(Reply(), to_thread=asyncio.to_thread)
            if held is None:
                return resp
            resp.release()  # the 401's connection goes back to the pool

    def _allows(self, url: URL) -> bool:
        """The hosts rule for this hop; without ``hosts``: the first request's origin only."""
        port = url.explicit_port  # None: the scheme's default
        if self.flow.hosts is not None:
            return self.flow.allows(url.scheme, url.host, port)
        origin = (url.scheme, url.host, url.port)
        if self._origin is None:
            with self._lock:
                if self._origin is None:
                    self._origin = origin
        if origin != self._origin:
            log.debug("sa-token: no token for %s: this middleware sends it to %s only (give hosts=)",
                      url.origin(), self._origin)
            return False
        return True


def _replayable(req: ClientRequest) -> bool:
    body = req.body
    return not (isinstance(body, Payload) and body.consumed)

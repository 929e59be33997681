"""aiohttp server: a middleware that checks every request's bearer token.

```python
from aiohttp import web
from sa_token.verify import TokenVerifier
from sa_token.verify.aiohttp import middleware

verifier = TokenVerifier(audience="payments")
app = web.Application(middlewares=[middleware(verifier, exempt=("/healthz",))])

async def pay(request: web.Request) -> web.Response:
    identity = request["sa_token.identity"]
```

Verification never blocks the event loop (`TokenVerifier.averify`). Paths in ``exempt``
pass unchecked. Refusals: 401 with ``WWW-Authenticate: Bearer`` (``error="invalid_token"``
when a token was sent), 503 when the verifier cannot decide.
"""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Iterable
from typing import Any, Callable

try:
    from aiohttp import web
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("sa_token.verify.aiohttp needs aiohttp: pip install 'sa-token[aiohttp]'") from exc

from ._identity import Identity
from ._serving import IDENTITY_KEY, adecide
from ._verifier import TokenVerifier

__all__ = ["IDENTITY_KEY", "middleware"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_stored = False


def _store(request: web.Request, identity: Identity) -> None:
    """``request["sa_token.identity"] = identity``. aiohttp >= 3.13 recommends typed
    ``web.RequestKey``s and warns the first time a process uses a string key; this documented
    string key is ours, so that one warning is not shown (later stores do not warn)."""
    global _stored  # noqa: PLW0603 - once per process, as aiohttp's own warning
    if _stored:
        request[IDENTITY_KEY] = identity
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", getattr(web, "NotAppKeyWarning", UserWarning))
        request[IDENTITY_KEY] = identity
    _stored = True


def middleware(verifier: TokenVerifier, *, exempt: Iterable[str] = ("/healthz",)) -> Any:
    """An aiohttp middleware (``web.Application(middlewares=[...])``) that puts the caller's
    `Identity` in ``request["sa_token.identity"]``."""
    skip = frozenset(exempt)

    @web.middleware
    async def sa_token_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in skip:
            return await handler(request)
        outcome = await adecide(verifier, request.headers.get("Authorization"))
        if isinstance(outcome, Identity):
            _store(request, outcome)
            return await handler(request)
        return web.Response(
            status=outcome.status,
            body=outcome.body(),
            headers=dict(outcome.headers),
            content_type="application/json",
        )

    return sa_token_auth

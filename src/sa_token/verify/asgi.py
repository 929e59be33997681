"""ASGI (Starlette, FastAPI, Quart, Django's ASGI...): a middleware and a FastAPI dependency.

```python
from sa_token.verify import TokenVerifier
from sa_token.verify.asgi import TokenAuthMiddleware, require_identity

verifier = TokenVerifier(audience="payments")
app = TokenAuthMiddleware(app, verifier, exempt=("/healthz",))   # any ASGI app
# FastAPI, per route (OpenAPI shows the bearer scheme):
@api.get("/pay")
async def pay(identity: Identity = Depends(require_identity(verifier))): ...
```

The middleware is pure ASGI: ``http`` and ``websocket`` scopes are checked (a refused websocket
never reaches the app: it gets an HTTP 401/503 where the server supports the websocket
denial-response extension, else a close before accept), ``lifespan`` and other scopes pass
through, paths in ``exempt`` pass unchecked. The identity is ``scope["sa_token.identity"]``.
Refusals: 401 with ``WWW-Authenticate: Bearer`` (``error="invalid_token"`` when a token was
sent), 503 when the verifier cannot decide (never 401: the caller did nothing wrong).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Iterable, MutableMapping
from typing import Any, Callable, Optional

from ._identity import Identity
from ._jwt import Presented
from ._serving import IDENTITY_KEY, Refusal, adecide, refusal
from ._verifier import TokenVerifier
from .errors import VerificationError

__all__ = ["IDENTITY_KEY", "TokenAuthMiddleware", "require_identity"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_POLICY_VIOLATION, _TRY_AGAIN_LATER = 1008, 1013  # websocket close codes (RFC 6455 7.4.1, IANA)


def _authorization(scope: Scope) -> Optional[bytes]:
    for name, value in scope.get("headers") or ():
        if name.lower() == b"authorization":
            return bytes(value)
    return None


class TokenAuthMiddleware:
    """Checks the bearer token of every ``http`` and ``websocket`` request (see the module)."""

    def __init__(self, app: Any, verifier: TokenVerifier, *, exempt: Iterable[str] = ("/healthz",)) -> None:
        self.app, self.verifier, self.exempt = app, verifier, frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        outcome = await adecide(self.verifier, _authorization(scope))
        if isinstance(outcome, Identity):
            scope[IDENTITY_KEY] = outcome
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await _respond(send, outcome, "http.response")
        else:
            await _deny_websocket(scope, receive, send, outcome)


async def _respond(send: Send, refused: Refusal, prefix: str) -> None:
    body = refused.body()
    headers = [(k.lower().encode(), v.encode()) for k, v in refused.headers]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": f"{prefix}.start", "status": refused.status, "headers": headers})
    await send({"type": f"{prefix}.body", "body": body})


async def _deny_websocket(scope: Scope, receive: Receive, send: Send, refused: Refusal) -> None:
    message = await receive()  # websocket.connect
    if message.get("type") != "websocket.connect":
        return
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await _respond(send, refused, "websocket.http.response")
    else:  # closing before accept: the server answers the handshake with 403
        code = _TRY_AGAIN_LATER if refused.status == 503 else _POLICY_VIOLATION
        await send({"type": "websocket.close", "code": code, "reason": refused.reason})


def require_identity(verifier: TokenVerifier) -> Callable[..., Awaitable[Identity]]:
    """A FastAPI dependency: ``identity: Identity = Depends(require_identity(verifier))``.

    Built on ``fastapi.security.HTTPBearer`` (OpenAPI shows the bearer scheme); no token is a
    401 (not FastAPI's 403), a refused one 401, an undecidable one 503. Behind
    `TokenAuthMiddleware` it takes the identity the middleware found.
    """
    try:
        from fastapi import Depends, HTTPException, Request
        from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    except ImportError as exc:
        raise ImportError("require_identity needs FastAPI: pip install fastapi") from exc
    scheme = HTTPBearer(auto_error=False, description="A projected ServiceAccount token")

    async def identity(
        request: Request, credentials: Optional[HTTPAuthorizationCredentials] = None
    ) -> Identity:
        found = request.scope.get(IDENTITY_KEY)
        if isinstance(found, Identity):
            return found
        presented = None if credentials is None else Presented(credentials.credentials)
        del credentials  # its repr shows the token
        if presented is None:
            refused = refusal(None)
        else:
            try:
                return await verifier.averify_presented(presented)
            except VerificationError as exc:
                refused = refusal(exc)
        raise HTTPException(refused.status, detail=refused.message, headers=dict(refused.headers))

    # FastAPI reads the parameters from the signature; this module's annotations are strings
    # (PEP 563) naming what was imported here, so the signature is given with the objects.
    p = inspect.Parameter.POSITIONAL_OR_KEYWORD
    identity.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("request", p, annotation=Request),
            inspect.Parameter(
                "credentials", p, default=Depends(scheme), annotation=Optional[HTTPAuthorizationCredentials]
            ),
        ],
        return_annotation=Identity,
    )
    return identity

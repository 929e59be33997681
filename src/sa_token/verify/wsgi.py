"""WSGI (Flask, Django, any WSGI app): a middleware that checks every request's bearer token.

```python
from sa_token.verify import TokenVerifier
from sa_token.verify.wsgi import TokenAuthMiddleware

verifier = TokenVerifier(audience="payments")
app.wsgi_app = TokenAuthMiddleware(app.wsgi_app, verifier, exempt=("/healthz",))   # Flask
application = TokenAuthMiddleware(get_wsgi_application(), verifier)               # Django
```

The identity is ``environ["sa_token.identity"]`` (Flask: ``request.environ``; Django:
``request.META``). Paths in ``exempt`` (``PATH_INFO``) pass unchecked. Refusals: 401 with
``WWW-Authenticate: Bearer`` (``error="invalid_token"`` when a token was sent), 503 when the
verifier cannot decide. A WSGI server runs requests in threads: `TokenVerifier.verify` is
thread-safe and O(1) for a token seen before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable

from ._identity import Identity
from ._serving import IDENTITY_KEY, decide
from ._verifier import TokenVerifier

__all__ = ["IDENTITY_KEY", "TokenAuthMiddleware"]


class TokenAuthMiddleware:
    """Checks the bearer token of every request (see the module)."""

    def __init__(self, app: Any, verifier: TokenVerifier, *, exempt: Iterable[str] = ("/healthz",)) -> None:
        self.app, self.verifier, self.exempt = app, verifier, frozenset(exempt)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") in self.exempt:
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        outcome = decide(self.verifier, environ.get("HTTP_AUTHORIZATION"))
        if isinstance(outcome, Identity):
            environ[IDENTITY_KEY] = outcome
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        body = outcome.body()
        headers = [*outcome.headers, ("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_response(outcome.status_line, headers)
        return [body]

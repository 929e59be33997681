"""sa-token: consume projected, rotating Kubernetes ServiceAccount tokens correctly.

```python
from sa_token import TokenSource
src = TokenSource("/var/run/secrets/tokens/vault", audience="vault")
headers = {"Authorization": f"Bearer {src.token()}"}
```

Integrations live in their own modules and import their library lazily:
``sa_token.requests``, ``sa_token.httpx``, ``sa_token.kubernetes`` (and ``.aio``),
``sa_token.kubernetes_asyncio``. The test kit is ``sa_token.testing``.
"""

from __future__ import annotations

from ._ca import CABundle, CAFileError
from ._source import DEFAULT_TOKEN_PATH, TokenSource, TokenStatus
from ._token import Token
from ._version import __version__
from .errors import (
    AudienceMismatchError,
    ConfigurationError,
    ExchangeError,
    IssuerMismatchError,
    MalformedTokenError,
    ThreadStartError,
    TokenError,
    TokenExpiredError,
    TokenFileError,
    TokenNotYetValidError,
    TokenValidationError,
)

__all__ = [
    "DEFAULT_TOKEN_PATH",
    "AudienceMismatchError",
    "CABundle",
    "CAFileError",
    "ConfigurationError",
    "ExchangeError",
    "IssuerMismatchError",
    "MalformedTokenError",
    "Token",
    "TokenError",
    "TokenExpiredError",
    "TokenFileError",
    "TokenNotYetValidError",
    "TokenSource",
    "ThreadStartError",
    "TokenStatus",
    "TokenValidationError",
    "__version__",
]

# The `sa_token` logger and its NullHandler are made at the first line logged (`sa_token._log`):
# logging costs a third of this import.

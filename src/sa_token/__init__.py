"""sa-token: consume projected, rotating Kubernetes ServiceAccount tokens correctly.

```python
from sa_token import TokenSource
src = TokenSource("/var/run/secrets/tokens/vault", audience="vault")
headers = {"Authorization": f"Bearer {src.token()}"}
```

Integrations live in their own modules and import their library lazily:
``sa_token.requests``, ``sa_token.httpx``, ``sa_token.kubernetes`` (and ``.aio``),
``sa_token.kubernetes_asyncio``. The test kit is ``sa_token.testing``.

``import sa_token`` loads nothing but this file: each name below is imported at its first use
(PEP 562), so an exec probe (``sa-token check``) or a module that only needs an error class
pays for what it uses, not for the watcher, the CA follower and their standard library.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing would cost more than the rest of this file
if TYPE_CHECKING:  # what the names below are, for type checkers and documentation tools
    from typing import Any

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

# Where each public name lives: imported on first access.
_LAZY = {
    "CABundle": "_ca",
    "CAFileError": "_ca",
    "DEFAULT_TOKEN_PATH": "_source",
    "TokenSource": "_source",
    "TokenStatus": "_source",
    "Token": "_token",
    "__version__": "_version",  # lazy too: `sa-token check` never shows it
    **dict.fromkeys(
        (
            "AudienceMismatchError",
            "ConfigurationError",
            "ExchangeError",
            "IssuerMismatchError",
            "MalformedTokenError",
            "ThreadStartError",
            "TokenError",
            "TokenExpiredError",
            "TokenFileError",
            "TokenNotYetValidError",
            "TokenValidationError",
        ),
        "errors",
    ),
}

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sa_token' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # once: later lookups are plain module attributes
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

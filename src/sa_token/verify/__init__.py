"""The receiving side: verify incoming projected ServiceAccount tokens (JWKS or TokenReview).

```python
from sa_token.verify import TokenVerifier, Identity, VerificationError

verifier = TokenVerifier(audience="payments")   # pip install 'sa-token[verify]' for method="jwks"
identity = verifier.verify(token)               # -> Identity; or await verifier.averify(token)
```

Server integrations, each in its server's idiom and sharing one verifier:
`sa_token.verify.asgi` (ASGI middleware, a FastAPI dependency), `sa_token.verify.wsgi`,
`sa_token.verify.aiohttp`, `sa_token.verify.grpc`. See docs/verify.md.
"""

from __future__ import annotations

from ._identity import Identity
from ._jwt import MAX_TOKEN_BYTES
from ._verifier import DEFAULT_LEEWAY, REVIEW_TTL, TokenVerifier
from .errors import (
    BadSignatureError,
    ExpiredJWTError,
    MalformedJWTError,
    PrematureJWTError,
    TokenRefusedError,
    UnknownKeyError,
    UntrustedIssuerError,
    VerificationError,
    VerifierUnavailableError,
    WrongAudienceError,
)

__all__ = [
    "DEFAULT_LEEWAY",
    "MAX_TOKEN_BYTES",
    "REVIEW_TTL",
    "BadSignatureError",
    "ExpiredJWTError",
    "Identity",
    "MalformedJWTError",
    "PrematureJWTError",
    "TokenRefusedError",
    "TokenVerifier",
    "UnknownKeyError",
    "UntrustedIssuerError",
    "VerificationError",
    "VerifierUnavailableError",
    "WrongAudienceError",
]

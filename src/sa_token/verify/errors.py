"""Why an incoming token was not accepted: `VerificationError` and its subclasses.

```text
VerificationError (a sa_token.TokenError)    base: the token was not accepted
├── MalformedJWTError        not a compact JWS, over MAX_TOKEN_BYTES, or ``alg`` not an
│                            asymmetric signature (``none``, ``HS256``...); also
│                            sa_token.MalformedTokenError (a ValueError)
├── UntrustedIssuerError     ``iss`` is not the issuer; also sa_token.IssuerMismatchError
├── ExpiredJWTError          ``exp`` passed more than ``leeway`` ago; also TokenExpiredError
├── PrematureJWTError        ``nbf``/``iat`` more than ``leeway`` ahead; also TokenNotYetValidError
├── WrongAudienceError       no audience of the token is one asked for; also AudienceMismatchError
├── UnknownKeyError          no key of the issuer has the token's ``kid``
├── BadSignatureError        the signature does not verify with the issuer's key
├── TokenRefusedError        TokenReview said no: deleted pod, deleted ServiceAccount, revoked...
└── VerifierUnavailableError the keys or the API server cannot be reached, or refused the
                             verifier's own token, and nothing cached can answer: not the
                             caller's fault (a server answers 503 / UNAVAILABLE, never 401)
```

Every message says what was wrong, through sa-token's one formatter for outside text; none
echoes the token. ``reason`` is a short, stable code (``"expired"``, ``"unknown-key"``,
``"unavailable"``...) for programs and metrics labels. Everything but
`VerifierUnavailableError` is the caller's fault: ``error.caller_fault`` says which.
"""

from __future__ import annotations

from sa_token.errors import (
    AudienceMismatchError,
    IssuerMismatchError,
    MalformedTokenError,
    TokenError,
    TokenExpiredError,
    TokenNotYetValidError,
)

__all__ = [
    "BadSignatureError",
    "ExpiredJWTError",
    "MalformedJWTError",
    "PrematureJWTError",
    "TokenRefusedError",
    "UnknownKeyError",
    "UntrustedIssuerError",
    "VerificationError",
    "VerifierUnavailableError",
    "WrongAudienceError",
]


class VerificationError(TokenError):
    """An incoming token was not accepted. ``caller_fault`` is False only for
    `VerifierUnavailableError` (answer 503, not 401)."""

    reason = "unverified"
    caller_fault = True


class MalformedJWTError(VerificationError, MalformedTokenError):
    """Not a compact JWS (three base64url parts, JSON header and payload), longer than
    `MAX_TOKEN_BYTES`, claims of the wrong type, or an ``alg`` that is not an asymmetric
    signature: ``none`` and ``HS*`` are refused before any key is looked at."""

    reason = "malformed"


class UntrustedIssuerError(VerificationError, IssuerMismatchError):
    """The token's ``iss`` is not the verifier's issuer (a token of another cluster or IdP)."""

    reason = "issuer-mismatch"


class ExpiredJWTError(VerificationError, TokenExpiredError):
    """``exp`` passed more than ``leeway`` seconds ago (``expires_at`` says when)."""

    reason = "expired"


class PrematureJWTError(VerificationError, TokenNotYetValidError):
    """``nbf`` (or ``iat``) lies more than ``leeway`` seconds in the future."""

    reason = "not-yet-valid"


class WrongAudienceError(VerificationError, AudienceMismatchError):
    """None of the token's audiences is one the verifier accepts: a token meant for another
    service (what audience-bound tokens exist to stop)."""

    reason = "audience-mismatch"


class UnknownKeyError(VerificationError):
    """The issuer publishes no key with the token's ``kid`` (after at most one refetch of the
    keys per `KID_REFETCH_COOLDOWN`)."""

    reason = "unknown-key"


class BadSignatureError(VerificationError):
    """The signature does not verify with the issuer's key: forged or corrupted."""

    reason = "bad-signature"


class TokenRefusedError(VerificationError):
    """The API server's TokenReview did not authenticate the token (its pod or ServiceAccount
    was deleted, the token was revoked), or authenticated it without confirming one of the
    audiences asked for (an API server that ignores audiences passes no token)."""

    reason = "refused"


class VerifierUnavailableError(VerificationError):
    """The verifier could not decide: the keys or the API server cannot be reached (or
    refused the verifier's own token) and nothing cached can answer. Not the caller's fault:
    servers answer 503 / ``UNAVAILABLE``. Tried again (with backoff) by later calls."""

    reason = "unavailable"
    caller_fault = False

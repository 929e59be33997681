"""What every server integration shares: the bearer out of a header, and the answer to a
refusal (401 with ``WWW-Authenticate: Bearer``, or 503 when the verifier cannot decide).

The integrations stay thin: find the header in their server's request, ask `decide` (or
`adecide`), put the `Identity` where their framework keeps per-request data, or send the
`Refusal`. The token leaves the header as a `Presented` (``repr`` hidden).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, NamedTuple, Optional, Union

from sa_token import _fmt

from ._identity import Identity
from ._jwt import Presented
from .errors import VerificationError

if TYPE_CHECKING:
    from ._verifier import TokenVerifier

__all__ = ["IDENTITY_KEY", "Refusal", "adecide", "bearer", "decide", "refusal"]

IDENTITY_KEY = "sa_token.identity"
# Seconds a client is told to wait after a 503: the JWKS and discovery backoff's first step
# is 1 s; a few seconds spread the retries of many clients.
RETRY_AFTER = "5"
_PHRASES = {401: "Unauthorized", 503: "Service Unavailable"}


class Refusal(NamedTuple):
    status: int  # 401 or 503
    reason: str  # the error's reason code ("missing" without a token)
    message: str  # for people; never the token
    headers: list[tuple[str, str]]

    @property
    def status_line(self) -> str:
        return f"{self.status} {_PHRASES[self.status]}"

    def body(self) -> bytes:
        return json.dumps({"error": self.reason, "message": self.message}).encode()


def bearer(value: Union[str, bytes, None]) -> Optional[Presented]:
    """The token of an ``Authorization: Bearer <token>`` value (scheme matched case-insensitively,
    as the API server does), else None."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return Presented(rest.strip())


def refusal(error: Optional[VerificationError]) -> Refusal:
    """The answer to a request without a usable token (``error`` None: none was sent)."""
    if error is None:
        return Refusal(401, "missing", "a bearer token is required", [("WWW-Authenticate", "Bearer")])
    message = _fmt.text(error, limit=300)
    if not error.caller_fault:
        return Refusal(503, error.reason, message, [("Retry-After", RETRY_AFTER)])
    challenge = 'Bearer error="invalid_token"'  # RFC 6750 3.1: a token was sent and is not accepted
    return Refusal(401, error.reason, message, [("WWW-Authenticate", challenge)])


def decide(verifier: TokenVerifier, header: Union[str, bytes, None]) -> Union[Identity, Refusal]:
    presented = bearer(header)
    del header  # the raw header value holds the token
    if presented is None:
        return refusal(None)
    try:
        return verifier.verify_presented(presented)
    except VerificationError as exc:
        return refusal(exc)


async def adecide(verifier: TokenVerifier, header: Union[str, bytes, None]) -> Union[Identity, Refusal]:
    presented = bearer(header)
    del header  # the raw header value holds the token
    if presented is None:
        return refusal(None)
    try:
        return await verifier.averify_presented(presented)
    except VerificationError as exc:
        return refusal(exc)

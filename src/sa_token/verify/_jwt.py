"""The checks that need no key and no network: shape, size, ``alg``, times, audience, issuer.

Everything here runs before any key is looked at or any request is made, so that garbage and
foreign tokens cost microseconds and never reach the JWKS endpoint or TokenReview. The token
travels as a `Presented`, whose ``repr`` hides it: no frame here binds the raw string to a
local variable (error reporters print the locals of a traceback).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from sa_token import _fmt
from sa_token._jose import b64url, json_object

from ._identity import utc
from .errors import (
    ExpiredJWTError,
    MalformedJWTError,
    PrematureJWTError,
    UntrustedIssuerError,
    WrongAudienceError,
)

__all__ = ["ALGORITHMS", "MAX_TOKEN_BYTES", "Parsed", "Presented", "parse"]

# A pod-bound projected token is 1-1.5 KiB (long namespace, pod and ServiceAccount names reach
# about 2 KiB). 16 KiB is far above any real one and the common limit for a whole header line
# (nginx's large_client_header_buffers), so nothing real is refused and nothing huge is decoded.
MAX_TOKEN_BYTES = 16 * 1024
# The asymmetric signatures an issuer can publish keys for (kube-apiserver: RS256 and ES256/384/512;
# external signers and cloud issuers: RSA-PSS too). `none` and the HMAC algorithms are refused
# before any key is looked at: with a public key as an HMAC secret anyone could sign.
ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})


class Presented:
    """An incoming token, as it travels through the verifier: ``repr`` hides it."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"<a presented token of {len(self.value)} characters>"


class Parsed:
    """A token's decoded header and claims, what was signed and the signature. ``repr`` shows
    none of it."""

    __slots__ = ("claims", "header", "signature", "signing_input")

    def __init__(
        self, header: dict[str, Any], claims: dict[str, Any], signing_input: bytes, signature: bytes
    ):
        self.header, self.claims = header, claims
        self.signing_input, self.signature = signing_input, signature

    def __repr__(self) -> str:
        return f"<a parsed token, alg {self.alg}>"

    @property
    def alg(self) -> str:
        return str(self.header.get("alg"))

    @property
    def kid(self) -> Optional[str]:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None

    @property
    def exp(self) -> float:
        return float(self.claims["exp"])

    @property
    def audiences(self) -> tuple[str, ...]:
        aud = self.claims.get("aud")
        return (aud,) if isinstance(aud, str) else tuple(aud or ())


# The errors below are raised outside the ``except`` blocks: a chained cause or context would
# keep the frames that held the token's parts.
def _decode(segment: str, what: str) -> bytes:
    raw = b64url(segment)
    if raw is None:
        raise MalformedJWTError(f"the token's {what} is not base64url")
    return raw


def _json(segment: str, what: str) -> dict[str, Any]:
    value = json_object(_decode(segment, what))
    if value is None:
        raise MalformedJWTError(f"the token's {what} is not a JSON object")
    return value


def parse(presented: Presented) -> Parsed:
    """Decode a compact JWS: three base64url parts, JSON header and payload, an asymmetric
    ``alg``, claims of the right types (``exp`` and ``aud`` required). Raises
    `MalformedJWTError` saying what is wrong, never showing the token."""
    value = presented.value
    if not isinstance(value, str):
        raise MalformedJWTError(f"a token is a string, not {type(value).__name__}")
    if len(value) > MAX_TOKEN_BYTES:
        raise MalformedJWTError(f"the token is longer than {MAX_TOKEN_BYTES} characters")
    if value.count(".") != 2:
        raise MalformedJWTError("not a JWT: a compact JWS has three parts separated by dots")
    head, payload, sig = value.split(".")
    header = _json(head, "header")
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        shown = _fmt.text(alg, limit=20) if isinstance(alg, str) else type(alg).__name__
        raise MalformedJWTError(f"alg {shown!r} is not an asymmetric signature algorithm; refused")
    if "crit" in header:  # RFC 7515 4.1.11: extensions a verifier does not understand are refused
        raise MalformedJWTError("the token's header has 'crit' extensions; refused")
    claims = _json(payload, "payload")
    problem = _claims_problem(claims)
    if problem is not None:
        raise MalformedJWTError(problem)
    return Parsed(header, claims, f"{head}.{payload}".encode("ascii"), _decode(sig, "signature"))


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) < 1e16


def _claims_problem(claims: Mapping[str, Any]) -> Optional[str]:
    if not _number(claims.get("exp")):
        return "the token has no numeric 'exp' claim: only expiring tokens are accepted"
    for name in ("nbf", "iat"):
        if name in claims and not _number(claims[name]):
            return f"the token's {name!r} claim is not a number"
    return _shape_problem(claims)


def _shape_problem(claims: Mapping[str, Any]) -> Optional[str]:
    aud = claims.get("aud")
    if not (isinstance(aud, str) or (isinstance(aud, list) and all(isinstance(a, str) for a in aud))):
        return "the token has no 'aud' claim (a string or a list of strings)"
    for name in ("iss", "sub", "jti"):
        if name in claims and not isinstance(claims[name], str):
            return f"the token's {name!r} claim is not a string"
    if "kubernetes.io" in claims and not isinstance(claims["kubernetes.io"], dict):
        return "the token's 'kubernetes.io' claim is not an object"
    return None


def check_times(parsed: Parsed, now: float, leeway: float) -> None:
    """``exp``, ``nbf`` and ``iat`` with ``leeway`` seconds either way (go-jose's order)."""
    exp = parsed.exp
    if now > exp + leeway:
        raise ExpiredJWTError(
            f"the token expired {_fmt.duration(now - exp)} ago ({_fmt.iso(exp)}), beyond the "
            f"{_fmt.duration(leeway)} leeway",
            expires_at=utc(exp),
        )
    for name in ("nbf", "iat"):
        start = parsed.claims.get(name)
        if start is not None and now < float(start) - leeway:
            raise PrematureJWTError(
                f"the token's {name!r} is {_fmt.duration(float(start) - now)} in the future "
                f"({_fmt.iso(float(start))}), beyond the {_fmt.duration(leeway)} leeway"
            )


def matched_audiences(parsed: Parsed, accepted: Sequence[str]) -> tuple[str, ...]:
    """The token's audiences that are accepted; `WrongAudienceError` when there are none."""
    theirs = parsed.audiences
    matched = tuple(a for a in theirs if a in accepted)
    if not matched:
        shown = ", ".join(repr(_fmt.text(a, limit=80)) for a in theirs[:5]) or "none"
        raise WrongAudienceError(
            f"the token is for audience {shown}, not {' or '.join(repr(a) for a in accepted)}"
        )
    return matched


def check_issuer(parsed: Parsed, issuer: str) -> None:
    iss = parsed.claims.get("iss")
    if iss != issuer:
        shown = "none" if iss is None else repr(_fmt.text(iss, limit=120))
        raise UntrustedIssuerError(f"the token's issuer is {shown}, not {issuer!r}")

"""The one validity rule: may this token be used now, by a client expecting these claims?

A pure function of the token, the time and the expectations, used by `TokenSource` on every
read and by the CLI's `inspect`, `watch` and `check`, so that they cannot disagree.
"""

from __future__ import annotations

from . import _fmt
from ._token import Token
from .errors import (
    AudienceMismatchError,
    IssuerMismatchError,
    TokenExpiredError,
    TokenNotYetValidError,
    TokenValidationError,
)

TYPE_CHECKING = False  # not typing's: this module is on `sa-token check`'s path (an exec probe)
if TYPE_CHECKING:
    from typing import Optional

__all__ = [
    "DEFAULT_LEEWAY",
    "STALE_MARGIN",
    "Expectations",
    "binding_error",
    "check",
    "stale_for",
    "time_error",
    "valid_from",
]

# Allowed clock skew for nbf/iat: the API server stamps them with its own clock; go-jose's
# jwt.DefaultLeeway, which the API server's authenticator uses, is one minute. `exp` gets none:
# the kubelet rotates at 80% of the lifetime, long before it matters.
DEFAULT_LEEWAY = 60.0
# After the rotation point, how long to wait for the kubelet before calling the token stale: its
# jitter (up to 10 s) plus the pod resync period (1 min with 50% jitter, so 90 s).
STALE_MARGIN = 100.0


class Expectations:
    """What a client requires of its token: one of ``audiences`` (``None``: any), the exact
    ``issuer`` (``None``: any), and the clock skew ``leeway`` allowed for ``nbf``/``iat``.
    Immutable, equal and hashed by its three fields (sources sharing them share a view). Not a
    ``typing.NamedTuple``: this module is on `sa-token check`'s path, and typing is not."""

    __slots__ = ("audiences", "issuer", "leeway")
    audiences: Optional[tuple[str, ...]]
    issuer: Optional[str]
    leeway: float

    def __init__(
        self, audiences: Optional[tuple[str, ...]] = None, issuer: Optional[str] = None,
        leeway: float = DEFAULT_LEEWAY,
    ) -> None:
        object.__setattr__(self, "audiences", audiences)
        object.__setattr__(self, "issuer", issuer)
        object.__setattr__(self, "leeway", leeway)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: Expectations are immutable")

    def _key(self) -> tuple[Optional[tuple[str, ...]], Optional[str], float]:
        return self.audiences, self.issuer, self.leeway

    def __eq__(self, other: object) -> bool:
        return type(other) is Expectations and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Expectations(audiences={self.audiences!r}, issuer={self.issuer!r}, leeway={self.leeway!r})"


def binding_error(tok: Token, expect: Expectations, path: Optional[str]) -> Optional[TokenValidationError]:
    """The error if the token is not for the expected audience or issuer (a configuration
    error: it will not heal by waiting), else ``None``. Cheap when it is: the text is built
    only for an error (a new source on an already-read file costs microseconds)."""
    if expect.audiences is not None and not set(expect.audiences) & set(tok.audiences):
        where = _fmt.path(path) if path else "the token"
        want = expect.audiences[0] if len(expect.audiences) == 1 else list(expect.audiences)
        return AudienceMismatchError(
            f"token at {where} is for audience {_fmt.text(list(tok.audiences))}, "
            f"not {_fmt.text(repr(want))}; "
            "set serviceAccountToken.audience in the pod's projected volume, or pass the "
            "audience this token is for",
            path=path,
        )
    if expect.issuer is not None and tok.issuer != expect.issuer:
        where = _fmt.path(path) if path else "the token"
        return IssuerMismatchError(
            f"token at {where} was issued by {_fmt.text(repr(tok.issuer))}, "
            f"not {_fmt.text(repr(expect.issuer))}; "
            "check the cluster's --service-account-issuer or the issuer you expect",
            path=path,
        )
    return None


def valid_from(tok: Token, leeway: float) -> float:
    """The first instant the token may be used: its ``nbf`` and ``iat``, less the leeway."""
    start = float("-inf")
    for claim in ("nbf", "iat"):
        t = tok.claims.get(claim)
        if t is not None:
            start = max(start, float(t) - leeway)
    return start


def time_error(tok: Token, now: float, leeway: float, path: Optional[str]) -> Optional[TokenValidationError]:
    """The error if the token is expired or not yet valid at ``now`` (POSIX seconds), else
    ``None``. Cheap when the token is valid (`TokenSource.status` calls it at every scrape)."""
    exp = tok._exp_ts
    if now >= exp:
        where = _fmt.path(path) if path else "the token"
        rp = tok._rotation_ts
        why = (
            f"the kubelet should have rotated it at {_fmt.iso(rp)} (80% of its lifetime): check the "
            "kubelet and the volume (a subPath mount never rotates)"
            if rp is not None
            else "check the kubelet and the volume (a subPath mount never rotates)"
        )
        return TokenExpiredError(
            f"token at {where} expired at {_fmt.iso(exp)}, {_fmt.duration(now - exp)} ago; {why}",
            path=path,
            expires_at=tok.expires_at,
        )
    for claim in ("nbf", "iat"):
        t = tok.claims.get(claim)
        if t is not None and t - leeway > now:
            where = _fmt.path(path) if path else "the token"
            return TokenNotYetValidError(
                f"token at {where} is not valid until {_fmt.iso(t)} ({claim} is {_fmt.duration(t - now)} "
                f"in the future, beyond the {leeway:.0f}s leeway); check this node's clock",
                path=path,
            )
    return None


def check(
    tok: Token, now: float, expect: Expectations, path: Optional[str]
) -> Optional[TokenValidationError]:
    """The first reason not to use the token (binding, then time), or ``None``."""
    return binding_error(tok, expect, path) or time_error(tok, now, expect.leeway, path)


def stale_for(tok: Token, now: float) -> Optional[float]:
    """Seconds since the kubelet should have rotated this token (past its rotation point plus
    `STALE_MARGIN`) while it is still unexpired; ``None`` when it is not stale."""
    rp = tok._rotation_ts
    if rp is None or now >= tok._exp_ts:
        return None
    late = now - (rp + STALE_MARGIN)
    return late if late >= 0 else None

"""``Token``: one parsed projected ServiceAccount token (immutable), and its parser.

The parser decodes the JWT without verifying its signature: a pod has no access to the API
server's signing key, and the server checks the signature anyway. What it checks locally is
the shape of the claims, so a garbled file is refused with a clear error instead of being sent.
"""

from __future__ import annotations

from functools import cached_property
from types import MappingProxyType

from . import _clock, _fmt
from ._jose import b64url, json_object
from .errors import MalformedTokenError

TYPE_CHECKING = False  # not typing's: this module is on `sa-token check`'s path (an exec probe)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime, timedelta
    from typing import Any, Optional

__all__ = ["Token", "parse_token"]

# The kubelet rotates a projected token once 80% of its lifetime has passed
# (token_manager.go requiresRefresh: exp - 20% of expirationSeconds)...
ROTATION_FRACTION = 0.8
# ...or once it is older than 24 h (maxTTL), whatever its lifetime.
MAX_ROTATION_AGE = 24 * 3600.0


def _mapping(value: object) -> Optional[Mapping[str, Any]]:
    """``value`` if it is a mapping, else None. What JSON gives (a dict, or no claim) is
    answered without importing ``collections.abc``, which `sa-token check` does not load."""
    if value is None or isinstance(value, dict):
        return value
    from collections.abc import Mapping

    return value if isinstance(value, Mapping) else None


class Token:
    """A parsed ServiceAccount token. Immutable; ``repr``/``str`` never show ``value``.

    A value: two tokens are equal when their JWTs are, and a token can be hashed (a set
    member, a dict key), copied and pickled (``copy.deepcopy`` and pickling give an equal
    token; neither shows the value).

    Times are aware UTC datetimes, or ``None`` when the claim is absent (legacy Secret-based
    tokens have no ``exp``: they never expire, ``expires_at`` is ``None``). The times every
    `TokenSource.status` needs are computed once per token (`functools.cached_property`: the
    token is immutable).
    """

    value: str
    """The raw JWT, what goes after ``Bearer``. Secret: never log it."""
    claims: Mapping[str, Any]
    """The decoded, unverified payload."""
    header: Mapping[str, Any]
    """The decoded JOSE header (``alg``, ``kid``)."""

    # A plain class, not a dataclass: `dataclasses` imports `inspect`, a sixth of `import
    # sa_token`. Frozen by __setattr__; cached_property writes __dict__ directly, as it must.
    def __init__(
        self, value: str, claims: Mapping[str, Any], header: Optional[Mapping[str, Any]] = None
    ) -> None:
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "claims", claims)
        object.__setattr__(self, "header", {} if header is None else header)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: a Token is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: a Token is immutable")

    @property
    def issuer(self) -> Optional[str]:
        return self.claims.get("iss")

    @property
    def subject(self) -> Optional[str]:
        return self.claims.get("sub")

    @property
    def audiences(self) -> tuple[str, ...]:
        aud = self.claims.get("aud")
        if aud is None:
            return ()
        return (aud,) if isinstance(aud, str) else tuple(aud)

    @property
    def issued_at(self) -> Optional[datetime]:
        return _dt(self.claims.get("iat"))

    @property
    def not_before(self) -> Optional[datetime]:
        return _dt(self.claims.get("nbf"))

    @cached_property
    def expires_at(self) -> Optional[datetime]:
        return _dt(self.claims.get("exp"))

    @property
    def warn_after(self) -> Optional[datetime]:
        """``kubernetes.io.warnafter``: for admission-injected tokens whose ``exp`` the API server
        extended to a year, the time the kubelet really treats as the end of the lifetime."""
        return _dt(self._k8s.get("warnafter"))

    @cached_property
    def _k8s(self) -> Mapping[str, Any]:
        k8s = self.claims.get("kubernetes.io")
        return _mapping(k8s) or {}

    @property
    def namespace(self) -> Optional[str]:
        ns = self._k8s.get("namespace")
        if ns is None:  # legacy Secret-based token: flat claims
            ns = self.claims.get("kubernetes.io/serviceaccount/namespace")
        return ns if isinstance(ns, str) else None

    @property
    def service_account(self) -> Optional[str]:
        return self._named("serviceaccount", "kubernetes.io/serviceaccount/service-account.name")

    @property
    def pod(self) -> Optional[str]:
        return self._named("pod", None)

    @property
    def node(self) -> Optional[str]:
        return self._named("node", None)

    def _named(self, key: str, legacy: Optional[str]) -> Optional[str]:
        obj = _mapping(self._k8s.get(key))
        name = None if obj is None else obj.get("name")
        if name is None and legacy is not None:
            name = self.claims.get(legacy)
        return name if isinstance(name, str) else None

    @property
    def lifetime(self) -> Optional[timedelta]:
        """How long the kubelet considers the token valid: ``warnafter`` (or ``exp``) minus
        ``iat`` (or ``nbf``). ``None`` for a token without ``exp``."""
        start = self._start
        end = self._end
        if start is None or end is None:
            return None
        return _timedelta(end - start)

    def remaining(self, now: Optional[float] = None) -> Optional[timedelta]:
        """Time left until ``exp`` (negative once expired), ``None`` without ``exp``.
        ``now`` is a POSIX timestamp, the current time by default."""
        exp = self.claims.get("exp")
        if exp is None:
            return None
        return _timedelta(exp - (_clock.wall() if now is None else now))

    @cached_property
    def rotation_due_at(self) -> Optional[datetime]:
        """When the kubelet will rotate this token: 80% of its lifetime, at most 24 h after issue."""
        ts = self._rotation_ts
        return None if ts is None else _dt(ts)

    @property
    def _start(self) -> Optional[float]:
        start = self.claims.get("iat")
        return self.claims.get("nbf") if start is None else start

    @property
    def _end(self) -> Optional[float]:
        end = self._k8s.get("warnafter")
        if not _is_number(end):
            end = self.claims.get("exp")
        return end

    @cached_property
    def _rotation_ts(self) -> Optional[float]:
        start, end = self._start, self._end
        if start is None or end is None:
            return None
        return min(start + ROTATION_FRACTION * (end - start), start + MAX_ROTATION_AGE)

    @cached_property
    def _exp_ts(self) -> float:
        exp = self.claims.get("exp")
        return float("inf") if exp is None else float(exp)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Token):
            return NotImplemented
        return self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __copy__(self) -> Token:
        return self  # immutable

    def __deepcopy__(self, memo: dict[int, Any]) -> Token:
        return self

    def __reduce__(self) -> tuple[Any, ...]:  # the claims are read-only mappings: pickle them as dicts
        return (_rebuild_token, (self.value, dict(self.claims), dict(self.header)))

    def __str__(self) -> str:
        return repr(self)

    def __repr__(self) -> str:
        parts = [f"sub={self.subject!r}", f"aud={list(self.audiences)!r}"]
        exp = self.expires_at
        parts.append(f"expires_at={exp.isoformat() if exp else None!r}")
        return f"Token({', '.join(parts)})"


def _rebuild_token(value: str, claims: dict[str, Any], header: dict[str, Any]) -> Token:
    return Token(value=value, claims=MappingProxyType(claims), header=MappingProxyType(header))


# JSON integers are unbounded; a timestamp beyond this (year ~292 billion) is no timestamp, and
# larger values would overflow float arithmetic.
_MAX_TIMESTAMP = 2**63


def _is_number(v: object) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return -_MAX_TIMESTAMP < v < _MAX_TIMESTAMP  # also False for nan and the infinities


def _timedelta(seconds: float) -> timedelta:
    """``timedelta(seconds=...)``, clamped to the range a timedelta can hold (about 2.7
    million years): claims such as ``exp=1e14`` parse, but no arithmetic on them may raise."""
    from datetime import timedelta  # here: `sa-token check` never needs one

    limit = timedelta.max.total_seconds()
    if seconds >= limit:
        return timedelta.max
    if seconds <= -limit:
        return timedelta.min
    return timedelta(seconds=seconds)


def _dt(v: object) -> Optional[datetime]:
    from datetime import datetime, timezone  # here: `sa-token check` never needs one

    if not _is_number(v):
        return None
    try:
        return datetime.fromtimestamp(float(v), tz=timezone.utc)  # type: ignore[arg-type]
    except (OverflowError, OSError, ValueError):
        return datetime.max.replace(tzinfo=timezone.utc) if float(v) > 0 else datetime.min.replace(  # type: ignore[arg-type]
            tzinfo=timezone.utc
        )


_NUMERIC = ("exp", "nbf", "iat")
_STRINGS = ("iss", "sub", "jti")


def parse_token(value: str, *, path: Optional[str] = None) -> Token:
    """Decode ``value`` (a JWT, signature not verified) and check its claims' types.

    Decoded with the standard library alone, so that what a garbled file can raise is known
    here, not in a decoder's version-dependent internals (pyjwt 2.6 - 2.14 let a deeply nested
    JSON header escape as ``RecursionError``). Raises `MalformedTokenError` naming ``path`` and
    the cause, never the token; its traceback starts here (no frame holding the token is kept).
    """
    try:
        return _parse(value, path)
    except MalformedTokenError as exc:
        raise exc.with_traceback(None) from None


def _parse(value: str, path: Optional[str]) -> Token:
    where = f"{_fmt.path(path)}: " if path else ""
    parts = value.split(".")
    if len(parts) != 3:
        raise MalformedTokenError(
            f"{where}not a JWT: expected three dot-separated parts, found {len(parts)}; "
            "check that the path points at a ServiceAccount token file",
            path=path,
        )
    header = _segment_json(parts[0], "header", where, path)
    claims = _segment_json(parts[1], "payload", where, path)
    signature = _segment_bytes(parts[2], "signature", where, path)
    problem = _numbers_problem(claims) or _signature_problem(signature, header) or _shapes_problem(claims)
    if problem is not None:
        raise MalformedTokenError(f"{where}{problem}", path=path)
    return Token(value=value, claims=MappingProxyType(claims), header=MappingProxyType(header))


def _numbers_problem(claims: dict[str, Any]) -> Optional[str]:
    for name in _NUMERIC:
        if name in claims and not _is_number(claims[name]):
            v = claims[name]
            numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
            got = "a number out of range" if numeric else type(v).__name__
            return f"claim {name!r} must be a number of seconds, got {got}"
    return None


def _shapes_problem(claims: dict[str, Any]) -> Optional[str]:
    """What is wrong with the string and audience claims' types (then ``kubernetes.io``'s)."""
    for name in _STRINGS:
        if name in claims and not isinstance(claims[name], str):
            return f"claim {name!r} must be a string, got {type(claims[name]).__name__}"
    aud = claims.get("aud")
    strings = isinstance(aud, list) and all(isinstance(a, str) for a in aud)
    if aud is not None and not (isinstance(aud, str) or strings):
        return f"claim 'aud' must be a string or a list of strings, got {type(aud).__name__}"
    return _kubernetes_problem(claims)


def _kubernetes_problem(claims: dict[str, Any]) -> Optional[str]:
    k8s = claims.get("kubernetes.io")
    if k8s is not None and not isinstance(k8s, dict):
        return f"claim 'kubernetes.io' must be an object, got {type(k8s).__name__}"
    if isinstance(k8s, dict) and "warnafter" in k8s and not _is_number(k8s["warnafter"]):
        return "claim 'kubernetes.io.warnafter' must be a number"
    return None


def _segment_bytes(segment: str, what: str, where: str, path: Optional[str]) -> bytes:
    raw = b64url(segment)
    if raw is None:
        raise MalformedTokenError(f"{where}not a valid JWT: the {what} is not base64url", path=path)
    return raw


def _segment_json(segment: str, what: str, where: str, path: Optional[str]) -> dict[str, Any]:
    obj = json_object(_segment_bytes(segment, what, where, path))
    if obj is None:
        raise MalformedTokenError(f"{where}not a valid JWT: the {what} is not a JSON object", path=path)
    return obj


# Signature sizes by algorithm: RSA signatures are as long as the key's modulus (kube-apiserver
# signs with RS256; 2048- to 4096-bit keys, 1024 for old clusters); ECDSA signatures are r||s.
_RSA_SIG_BYTES = {128, 256, 384, 512}
_SIG_BYTES = {"ES256": {64}, "ES384": {96}, "ES512": {132}, "EdDSA": {64}}


def _signature_problem(sig: bytes, header: dict[str, Any]) -> Optional[str]:
    """A file truncated inside the signature can still be valid base64: catch it by length, so
    a cut token is refused here rather than sent and rejected by the server."""
    alg = header.get("alg")
    if not isinstance(alg, str):
        return None
    sizes = _RSA_SIG_BYTES if alg[:2] in ("RS", "PS") else _SIG_BYTES.get(alg)
    if sizes is not None and len(sig) not in sizes:
        return (
            f"the {alg} signature is {len(sig)} bytes, not {' or '.join(map(str, sorted(sizes)))}: "
            "the file is truncated or corrupt"
        )
    return None

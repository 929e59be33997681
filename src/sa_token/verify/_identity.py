"""`Identity`: who sent a verified token. Frozen; holds no token."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from sa_token import _fmt

__all__ = ["Identity", "from_claims", "from_review", "utc"]

_SA_PREFIX = "system:serviceaccount:"
_EXTRA = "authentication.kubernetes.io/"


@dataclass(frozen=True)
class Identity:
    """Who a verified token says the caller is.

    ``username`` is ``system:serviceaccount:NAMESPACE:NAME``; ``pod``, ``pod_uid`` and ``node``
    are set for pod-bound tokens (``node`` from Kubernetes 1.30, informational: the API server
    does not check it). ``audiences`` are the token's audiences that the verifier accepts.
    ``issued_at``/``expires_at`` are aware UTC datetimes, from the token's own claims, as is
    ``jti``. ``method`` is ``"jwks"`` or ``"tokenreview"``: how it was verified.
    """

    username: str
    namespace: Optional[str]
    service_account: Optional[str]
    service_account_uid: Optional[str]
    pod: Optional[str]
    pod_uid: Optional[str]
    node: Optional[str]
    audiences: tuple[str, ...]
    issuer: Optional[str]
    jti: Optional[str]
    issued_at: Optional[datetime]
    expires_at: Optional[datetime]
    method: str

    def __str__(self) -> str:
        pod = f" (pod {self.namespace}/{self.pod})" if self.pod else ""
        return f"{self.username}{pod}"


def utc(v: object) -> Optional[datetime]:
    """A claim's POSIX seconds as an aware UTC datetime; None for a non-number or one out of range."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return None
    try:
        return datetime.fromtimestamp(v, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def _ref(k8s: Mapping[str, Any], key: str, field: str) -> Optional[str]:
    ref = k8s.get(key)
    value = ref.get(field) if isinstance(ref, dict) else None
    return _fmt.text(value, limit=253) if isinstance(value, str) else None


def _split(username: str) -> tuple[Optional[str], Optional[str]]:
    if username.startswith(_SA_PREFIX) and username.count(":") == 3:
        ns, name = username[len(_SA_PREFIX) :].split(":")
        return ns, name
    return None, None


def from_claims(claims: Mapping[str, Any], audiences: tuple[str, ...], method: str) -> Identity:
    """The identity a verified token's claims state (`kubernetes.io`, else ``sub``)."""
    username = _fmt.text(claims.get("sub") or "", limit=600)
    k8s = claims.get("kubernetes.io") or {}
    ns_from_sub, sa_from_sub = _split(username)
    ns = k8s.get("namespace")
    return Identity(
        username=username,
        namespace=_fmt.text(ns, limit=63) if isinstance(ns, str) else ns_from_sub,
        service_account=_ref(k8s, "serviceaccount", "name") or sa_from_sub,
        service_account_uid=_ref(k8s, "serviceaccount", "uid"),
        pod=_ref(k8s, "pod", "name"),
        pod_uid=_ref(k8s, "pod", "uid"),
        node=_ref(k8s, "node", "name"),
        audiences=audiences,
        issuer=_fmt.text(claims["iss"], limit=600) if isinstance(claims.get("iss"), str) else None,
        jti=_fmt.text(claims["jti"], limit=200) if isinstance(claims.get("jti"), str) else None,
        issued_at=utc(claims.get("iat")),
        expires_at=utc(claims.get("exp")),
        method=method,
    )


def _first(extra: Mapping[str, Any], name: str) -> Optional[str]:
    values = extra.get(_EXTRA + name)
    if isinstance(values, list) and values and isinstance(values[0], str):
        return _fmt.text(values[0], limit=253)
    return None


def from_review(user: Mapping[str, Any], claims: Mapping[str, Any], audiences: tuple[str, ...]) -> Identity:
    """The identity in a TokenReview's ``status.user`` (the API server's word); times and
    ``jti`` from the token's claims (the ``credential-id`` extra is ``JTI=<jti>``)."""
    username = _fmt.text(user.get("username") or "", limit=600)
    ns, sa = _split(username)
    found = user.get("extra")
    extra: Mapping[str, Any] = found if isinstance(found, dict) else {}
    credential = _first(extra, "credential-id")
    jti = credential[4:] if credential and credential.startswith("JTI=") else None
    uid = user.get("uid")
    return Identity(
        username=username,
        namespace=ns,
        service_account=sa,
        service_account_uid=_fmt.text(uid, limit=253) if isinstance(uid, str) and uid else None,
        pod=_first(extra, "pod-name"),
        pod_uid=_first(extra, "pod-uid"),
        node=_first(extra, "node-name"),
        audiences=audiences,
        issuer=_fmt.text(claims["iss"], limit=600) if isinstance(claims.get("iss"), str) else None,
        jti=jti or (_fmt.text(claims["jti"], limit=200) if isinstance(claims.get("jti"), str) else None),
        issued_at=utc(claims.get("iat")),
        expires_at=utc(claims.get("exp")),
        method="tokenreview",
    )

"""``TokenIssuer``: an RSA key that mints bound ServiceAccount tokens like kube-apiserver."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any, Optional, Union

__all__ = ["TokenIssuer"]

# The issuer kube-apiserver uses by default (--service-account-issuer on most distributions).
DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# 2048-bit RSA: what clusters use for service-account signing keys; smaller keys are refused by
# the cryptography package's RS256 signer policy on some builds.
DEFAULT_KEY_SIZE = 2048
# The default projected-token lifetime (ServiceAccountTokenProjection.expirationSeconds default).
DEFAULT_EXPIRATION_SECONDS = 3600
# With --service-account-extend-token-expiration the API server extends the tokens of
# kube-api-access volumes (which ask for 3607 s) to a year and records the real end in
# kubernetes.io.warnafter.
EXTENDED_EXPIRATION_SECONDS = 365 * 24 * 3600


def _b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class TokenIssuer:
    """Mints RS256 JWTs with the claim set of a pod-bound projected ServiceAccount token.

    ```python
    issuer = TokenIssuer()
    token = issuer.issue(audiences=["vault"], expiration_seconds=600)
    ```

    ``key_pem`` loads an existing RSA private key (see `private_key_pem`) instead of generating one.
    ``public_key_pem`` and [`jwks()`][sa_token.testing.TokenIssuer.jwks] give verifiers the key;
    [`verify()`][sa_token.testing.TokenIssuer.verify] checks a token the way kube-apiserver's authenticator
    does (signature, ``exp``, ``nbf``, ``aud``).
    """

    def __init__(
        self,
        *,
        issuer: str = DEFAULT_ISSUER,
        key_size: int = DEFAULT_KEY_SIZE,
        key_pem: Optional[bytes] = None,
    ) -> None:
        # Imported here, not at the top: the pytest plugin imports this package in every pytest
        # run of an application that installed sa-token, also without the testing extra.
        try:
            import jwt  # noqa: F401 - signing and verifying, below
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import rsa
        except ImportError as exc:
            raise ImportError(
                f"sa_token.testing.TokenIssuer needs pyjwt and cryptography ({exc.name} is missing): "
                "pip install 'sa-token[testing]'"
            ) from exc

        self.issuer = issuer
        if key_pem is None:
            self._key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
        else:  # the same key in another process (KubeletProcess), or a fixed key across runs
            key = serialization.load_pem_private_key(key_pem, password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise TypeError("key_pem must hold an RSA private key")
            self._key = key
        self._key_size = key_size
        self._lock = threading.Lock()
        self._keys: dict[str, Any] = {}  # kid -> private key: the signing key and those still published
        self._use(self._key)
        self.issued = 0

    def _use(self, key: Any) -> None:
        from cryptography.hazmat.primitives import serialization

        public = key.public_key()
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        # kid = base64url(sha256(PKIX DER)), as keyIDFromPublicKey in pkg/serviceaccount/jwt.go.
        kid = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
        with self._lock:
            self._key, self.public_key, self.kid = key, public, kid
            self._keys[kid] = key
        self.public_key_pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def kids(self) -> list[str]:
        """The ``kid`` of every published key (the signing key last)."""
        with self._lock:
            return list(self._keys)

    def rotate_key(self) -> str:
        """Sign with a new key from now on; the old keys stay published (in `jwks()`) and
        valid until `retire_key()`, as when kube-apiserver is given a second
        ``--service-account-key-file``. Returns the new ``kid``."""
        from cryptography.hazmat.primitives.asymmetric import rsa

        self._use(rsa.generate_private_key(public_exponent=65537, key_size=self._key_size))
        return self.kid

    def retire_key(self, kid: str) -> None:
        """Stop publishing (and accepting) the key ``kid``; the signing key cannot be retired."""
        with self._lock:
            if kid == self.kid:
                raise ValueError("the signing key cannot be retired: rotate_key() first")
            self._keys.pop(kid, None)

    def public_key_for(self, kid: Optional[str]) -> Any:
        """The public key published under ``kid`` (the signing key's for ``None``), or None."""
        with self._lock:
            key = self._key if kid is None else self._keys.get(kid)
        return None if key is None else key.public_key()

    def __repr__(self) -> str:
        return f"TokenIssuer(issuer={self.issuer!r}, kid={self.kid[:8]}...)"

    @property
    def private_key_pem(self) -> bytes:
        """The signing key (PKCS#8 PEM, unencrypted), for ``TokenIssuer(key_pem=...)`` elsewhere.
        A test key: never use a `TokenIssuer` for real tokens."""
        from cryptography.hazmat.primitives import serialization

        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def claims(
        self,
        *,
        audiences: Union[str, Iterable[str]] = ("https://kubernetes.default.svc.cluster.local",),
        expiration_seconds: float = DEFAULT_EXPIRATION_SECONDS,
        now: Optional[float] = None,
        namespace: str = "default",
        service_account: str = "default",
        pod: Optional[str] = "app-0",
        node: Optional[str] = "node-1",
        extend: bool = False,
        extra: Optional[dict[str, Any]] = None,
    ) -> dict[str, Any]:
        """The payload [`issue()`][sa_token.testing.TokenIssuer.issue] signs, as kube-apiserver builds it
        (claims.go ``Claims``)."""
        iat = int(time.time() if now is None else now)
        auds = [audiences] if isinstance(audiences, str) else list(audiences)
        k8s: dict[str, Any] = {
            "namespace": namespace,
            "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
        }
        if pod is not None:
            k8s["pod"] = {"name": pod, "uid": str(uuid.uuid4())}
        if node is not None:
            k8s["node"] = {"name": node, "uid": str(uuid.uuid4())}
        exp = iat + expiration_seconds
        if extend:  # --service-account-extend-token-expiration: exp one year out, warnafter the request
            k8s["warnafter"] = int(exp)
            exp = iat + EXTENDED_EXPIRATION_SECONDS
        claims: dict[str, Any] = {
            "aud": auds,  # always a JSON array (kubernetes/kubernetes#133569)
            "exp": int(exp),  # whole seconds, like kube-apiserver (and what verifiers compare)
            "iat": iat,
            "iss": self.issuer,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": k8s,
            "nbf": iat,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
        }
        claims.update(extra or {})
        return claims

    def issue(self, **kwargs: Any) -> str:
        """Mint a signed token; keyword arguments as for [`claims()`][sa_token.testing.TokenIssuer.claims]."""
        return self.sign(self.claims(**kwargs))

    def sign(self, claims: dict[str, Any]) -> str:
        """Sign an arbitrary payload with this issuer's key (header ``alg`` RS256 and ``kid``)."""
        with self._lock:
            self.issued += 1
            key, kid = self._key, self.kid
        import jwt

        # kube-apiserver's header has no "typ" (go-jose with nil options).
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid, "typ": None})

    def jwks(self) -> dict[str, Any]:
        """The JWKS document kube-apiserver serves at ``/openid/v1/jwks``: every published key."""
        with self._lock:
            keys = list(self._keys.items())
        out = []
        for kid, key in keys:
            nums = key.public_key().public_numbers()
            out.append(
                {"use": "sig", "kty": "RSA", "kid": kid, "alg": "RS256", "n": _b64(nums.n), "e": _b64(nums.e)}
            )
        return {"keys": out}

    def verify(
        self, token: str, *, audience: Union[str, Iterable[str], None] = None, leeway: float = 0
    ) -> dict[str, Any]:
        """Verify like the API server: RS256 signature with the published key of its ``kid``,
        ``exp``, ``nbf``, ``iss`` and (when given) ``aud``. Returns the claims; raises
        ``jwt.InvalidTokenError`` otherwise."""
        import jwt

        aud = [audience] if isinstance(audience, str) else (list(audience) if audience is not None else None)
        kid = jwt.get_unverified_header(token).get("kid")
        key = self.public_key_for(kid if isinstance(kid, str) else None)
        if key is None:
            raise jwt.InvalidSignatureError("no published key has this kid")
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            audience=aud,
            issuer=self.issuer,
            leeway=leeway,
            options={"require": ["exp", "iat", "nbf", "aud", "sub"], "verify_aud": aud is not None},
        )
        return claims

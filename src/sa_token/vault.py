"""Vault and OpenBao: log in with the projected token and stay logged in.

```python
source = TokenSource("/var/run/secrets/tokens/vault-token", audience="vault")
vault = VaultAuth(source, url="https://vault.vault.svc:8200", role="payments")
vault.client().secrets.kv.v2.read_secret_version(path="db")
```

The lease logic (renew at about 2/3 of the TTL, log in again, backoff, single flight, fork) is
shared with other exchanges in `sa_token._lease`; this module makes the hvac calls and
translates Vault's errors.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional, Union

try:
    import hvac
    import requests
    from hvac.adapters import JSONAdapter, RawAdapter
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("sa_token.vault needs the hvac package: pip install 'sa-token[vault]'") from exc

from . import _fmt
from ._lease import ExchangeError, Grant, Lease, LeaseKeeper
from ._observe import count_auth_retry, track_credential
from ._source import TokenSource
from ._token import Token

__all__ = ["VaultAuth", "VaultLease", "VaultLoginError"]

METHODS = ("kubernetes", "jwt")
FORBIDDEN = 403
# Answers after which the same call may succeed later: too many requests, a proxy without a
# backend, sealed or standby. (OpenBao answers 500 "past the max TTL" to a renewal it refuses.)
RETRY_LATER = frozenset({429, 502, 503, 504})
# Seconds to wait for Vault: hvac's own default.
DEFAULT_TIMEOUT = 30


class VaultLoginError(ExchangeError):
    """No valid Vault token: the login failed (or none could be attempted).

    The message quotes Vault's own error text (`server_message`, with `status`) and says what
    to check; it never contains a token. `reason` is `"rejected"` (Vault refused: wrong role,
    audience not allowed, service account not bound), `"unreachable"`, `"unavailable"` (sealed,
    5xx; `transient` is true for both) or `"projected-token-..."` (the projected token expired
    and the kubelet has not rotated it).
    """

    reason = "rejected"


@dataclass(frozen=True)
class VaultLease:
    """The Vault token held now, without the token itself (see
    [`VaultAuth.token`][sa_token.vault.VaultAuth.token])."""

    accessor: str
    policies: tuple[str, ...]
    expires_at: Optional[datetime]  # aware UTC; None for a token that does not expire
    renewable: bool
    token_type: str  # "service" or "batch"


@dataclass(frozen=True)
class _Issued:
    token: str = field(repr=False)
    accessor: str
    policies: tuple[str, ...]
    token_type: str


class _Vault:
    """The exchange: Vault's HTTP calls, through hvac's adapter (TLS, namespace, timeout)."""

    def __init__(self, url: str, role: str, method: str, mount: str, path: str, **adapter: Any) -> None:
        self.url, self.role, self.method, self.mount, self.path = url, role, method, mount, path
        self.adapter = RawAdapter(base_uri=url, token=None, **adapter)
        self.sessions = [self.adapter.session]

    def login(self, tok: Token) -> Grant[_Issued]:
        return self._grant(self._call("log in", f"/v1/auth/{self.mount}/login", None, tok))

    def renew(self, cred: _Issued) -> Grant[_Issued]:
        return self._grant(self._call("renew", "/v1/auth/token/renew-self", cred))

    def valid(self, cred: _Issued) -> bool:
        """False only if Vault says the token itself is invalid (lookup-self answers 403)."""
        try:
            return self._call("check", "/v1/auth/token/lookup-self", cred, method="get") is not None
        except VaultLoginError as exc:
            return exc.status != FORBIDDEN

    def revoke(self, cred: _Issued) -> None:
        self._call("revoke", "/v1/auth/token/revoke-self", cred)

    def error(self, message: str, *, reason: str, transient: bool = False) -> VaultLoginError:
        return VaultLoginError(message, path=self.path, reason=reason, transient=transient)

    def after_fork(self) -> None:  # connections inherited from the parent are the parent's
        for session in self.sessions:
            session.close()

    def _call(
        self, what: str, url: str, cred: Optional[_Issued], tok: Optional[Token] = None, method: str = "post"
    ) -> Any:
        failure = None
        try:
            resp = self.adapter.request(
                method,
                url,
                headers={"X-Vault-Token": cred.token} if cred else None,
                json={"role": self.role, "jwt": tok.value} if tok else None,
                raise_exception=False,
            )
        except requests.RequestException as exc:  # the raise below is outside: no chained frames
            failure = f"{type(exc).__name__}: {_fmt.text(exc)}"[:300]
        if failure is not None:
            raise self.error(f"cannot {what} at Vault {self.url}: {failure}; check url= and the network",
                             reason="unreachable", transient=True)
        if resp.ok:
            return resp.json() if resp.content else None
        try:
            errors = resp.json().get("errors") or []
        except ValueError:
            errors = [resp.text[:300]]
        said = _fmt.text(" ".join(" ".join(str(e).split()) for e in errors)) or resp.reason
        busy = resp.status_code in RETRY_LATER or (what == "log in" and resp.status_code >= 500)
        raise VaultLoginError(
            f"Vault {self.url} refused to {what} (HTTP {resp.status_code}): {said}"
            + (f"; {self._hint(said, tok)}" if tok else ""),
            path=self.path, reason="unavailable" if busy else "rejected", transient=busy,
            status=resp.status_code, server_message=said,
        )

    def _hint(self, said: str, tok: Token) -> str:
        text, auth = said.lower(), f"auth/{self.mount}"
        if "sealed" in text:
            return "Vault is sealed: unseal it"
        if "role" in text:
            return f"check that the role exists: `vault read {auth}/role/{self.role}` (role=)"
        if "audience" in text:
            field = "audience" if self.method == "kubernetes" else "bound_audiences"
            return (f"the token is for audience {_fmt.text(list(tok.audiences))}: check the role's {field} "
                    "and serviceAccountToken.audience in the pod's projected volume")
        if "not authorized" in text or "subject" in text or "claim" in text:
            return (f"the token is for {_fmt.text(tok.subject)}: check the role's bound_service_account_names"
                    " and bound_service_account_namespaces (jwt: bound_subject, bound_claims)")
        if "no handler" in text or "unsupported path" in text:
            return f"no auth method is mounted at {auth}: check mount_point="
        if "permission denied" in text and self.method == "kubernetes":
            return (f"Vault's TokenReview of the token failed: check {auth}/config (kubernetes_host, "
                    "kubernetes_ca_cert, token_reviewer_jwt allowed to create TokenReviews) and that "
                    "the pod still exists; Vault's log says more")
        return f"check the role {self.role!r} and {auth}/config"

    @staticmethod
    def _grant(body: Any) -> Grant[_Issued]:
        auth = body["auth"]
        cred = _Issued(auth["client_token"], auth.get("accessor") or "", tuple(auth.get("policies") or ()),
                       auth.get("token_type") or "service")
        return Grant(cred, float(auth.get("lease_duration") or 0), bool(auth.get("renewable")))


class VaultAuth:
    """A Vault token obtained with the projected token of `source`, kept valid in the background.

    Args:
        source: the projected token, for an audience the Vault role accepts.
        url: Vault's address.
        role: the Vault role to log in as.
        method: `"kubernetes"` (TokenReview through the API server) or `"jwt"` (the JWT/OIDC
            method, offline signature checks).
        mount_point: where the auth method is mounted (default: the method's name).
        verify: a CA bundle path, or `False`, as hvac takes it.
        namespace: a Vault namespace.
        timeout: seconds to wait for Vault.
        revoke_on_close: [`close`][sa_token.vault.VaultAuth.close] also revokes the token.
        max_backoff: the longest wait, seconds, between retries while Vault is unreachable.

    Raises:
        VaultLoginError: the first login failed (the constructor logs in).
    """

    def __init__(
        self,
        source: TokenSource,
        *,
        url: str,
        role: str,
        method: str = "kubernetes",
        mount_point: Optional[str] = None,
        verify: Union[bool, str] = True,
        namespace: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        revoke_on_close: bool = False,
        max_backoff: float = 300.0,  # Vault Agent's cap: 5 minutes
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {method!r}")
        self.source, self.url, self.role, self.method = source, url.rstrip("/"), role, method
        self.mount_point = (mount_point or method).strip("/")
        self.revoke_on_close = revoke_on_close
        self._verify, self._namespace, self._timeout = verify, namespace, timeout
        self._vault = _Vault(self.url, role, method, self.mount_point, source.path,
                             verify=verify, namespace=namespace, timeout=timeout)
        self._client: Optional[hvac.Client] = None
        self._client_lock = threading.Lock()
        self._keeper: LeaseKeeper[_Issued] = LeaseKeeper(
            source, self._vault, name=f"Vault {self.url} role {role!r} (auth/{self.mount_point})",
            renewal_needs_login_token=method == "kubernetes", backoff_max=max_backoff,
        )
        track_credential(self)

    def client(self) -> hvac.Client:
        """The `hvac.Client` of this login (one per `VaultAuth`, thread-safe as hvac is): each
        request carries the current Vault token. A 403 because the token is no longer valid
        (revoked, Vault restarted) leads to one new login and one retry; a policy denial is
        raised as is. Do not set `client.token` or log in through it."""
        with self._client_lock:
            if self._client is None:
                self._client = hvac.Client(
                    url=self.url, token="", verify=self._verify, namespace=self._namespace,
                    timeout=self._timeout,  # type: ignore[arg-type] # requests takes a float
                    adapter=functools.partial(_Adapter, vault=self),  # type: ignore[arg-type]
                )
                self._vault.sessions.append(self._client.session)
            return self._client

    def token(self) -> str:
        """The current Vault token. Waits only when no valid token exists (then it logs in)."""
        return self._keeper.current().credential.token

    async def atoken(self) -> str:
        """[`token`][sa_token.vault.VaultAuth.token] for asyncio: never blocks the event loop."""
        lease = self._keeper.peek()
        if lease is not None and lease.valid(self._keeper._now()):
            return lease.credential.token
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(None, self.token)

    @property
    def lease(self) -> VaultLease:
        """The Vault token held now: accessor, policies, expiry, renewable."""
        lease = self._keeper.peek() or self._keeper.current()
        cred = lease.credential
        exp = datetime.fromtimestamp(lease.expires_at, timezone.utc) if lease.expires_at < 1e11 else None
        return VaultLease(cred.accessor, cred.policies, exp, lease.renewable, cred.token_type)

    def close(self) -> None:
        """Stop renewing; with `revoke_on_close`, revoke the token this process obtained."""
        lease = self._keeper.close()
        if lease is not None and self.revoke_on_close:
            try:
                self._vault.revoke(lease.credential)
            except VaultLoginError as exc:
                _log.warning("sa-token: could not revoke Vault token %s: %s", lease.credential.accessor, exc)
        self._vault.after_fork()  # closes the connections

    def __enter__(self) -> VaultAuth:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VaultAuth(url={self.url!r}, role={self.role!r}, method={self.method!r}, {self._keeper!r})"

    # The metrics' ExchangedCredential protocol (sa_token._observe).
    credential_kind = "vault"

    @property
    def credential_source_path(self) -> Optional[str]:
        return self.source.path

    @property
    def credential_audience(self) -> Optional[str]:
        auds = self.source.audiences
        return auds[0] if auds else None

    def credential_expires_at(self) -> Optional[float]:
        lease = self._keeper.peek()
        return lease.expires_at if lease is not None and lease.expires_at < 1e11 else None

    def _after_403(self, sent: Lease[_Issued]) -> Optional[Lease[_Issued]]:
        """The lease to retry a refused request with, or None for a policy denial."""
        now = self._keeper.peek()
        if now is not None and now.generation != sent.generation and now.valid(self._keeper._now()):
            return now  # another thread already logged in again
        if self._vault.valid(sent.credential):
            return None
        count_auth_retry("vault")
        return self._keeper.replace(sent)


class _Adapter(JSONAdapter):
    """hvac's JSON adapter with the token of a `VaultAuth`: the header is set per request from the
    lease (a thread-local holds which one was sent), and a 403 is checked with lookup-self."""

    def __init__(self, *args: Any, vault: VaultAuth, **kwargs: Any) -> None:
        self._vault = vault
        self._sending = threading.local()
        super().__init__(*args, **kwargs)

    @property
    def token(self) -> str:  # read by RawAdapter.request for the X-Vault-Token header
        lease = getattr(self._sending, "lease", None) or self._vault._keeper.current()
        return str(lease.credential.token)

    @token.setter
    def token(self, value: Optional[str]) -> None:
        if value:
            raise AttributeError("the token of a VaultAuth client is managed by VaultAuth; "
                                 "use a plain hvac.Client for another token")

    def request(self, method: str, url: str, headers: Any = None, raise_exception: bool = True,
                **kwargs: Any) -> Any:
        lease = self._vault._keeper.current()
        resp = self._send(lease, method, url, headers, kwargs)
        if resp.status_code == FORBIDDEN:
            retry = self._vault._after_403(lease)
            if retry is not None:
                resp = self._send(retry, method, url, headers, kwargs)
        if not resp.ok and raise_exception and not self.ignore_exceptions:
            self._raise_for_error(method, url, resp)  # type: ignore[attr-defined]
        if resp.status_code == 200:
            try:
                return resp.json()
            except ValueError:
                pass
        return resp

    def _send(self, lease: Lease[_Issued], method: str, url: str, headers: Any, kwargs: Any) -> Any:
        self._sending.lease = lease
        try:
            return super(JSONAdapter, self).request(
                method, url, headers=dict(headers) if headers else None, raise_exception=False, **kwargs
            )
        except requests.RequestException as exc:
            error = exc
        finally:
            self._sending.lease = None
        # Re-raised without the frames below (they hold the headers, token included).
        error.__context__ = None
        error.__suppress_context__ = True
        raise error.with_traceback(None)


_log = logging.getLogger("sa_token")

"""Vault and OpenBao: log in with the projected token and stay logged in.

```python
source = TokenSource("/var/run/secrets/tokens/vault-token", audience="vault")
vault = VaultAuth(source, url="https://vault.vault.svc:8200", role="payments")
vault.client().secrets.kv.v2.read_secret_version(path="db", raise_on_deleted_version=True)
```

The lease logic (renew at about 2/3 of the TTL, log in again, backoff, single flight, fork) is
`sa_token._lease`, shared with other exchanges; this module makes hvac's calls and translates
Vault's errors.
"""

from __future__ import annotations

import functools
import logging
import math
import os
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
from ._lease import Grant, Lease, LeaseKeeper
from ._observe import count_auth_retry, track_credential
from ._source import TokenSource, require_source
from ._token import Token
from .errors import ConfigurationError, ExchangeError

__all__ = ["VaultAuth", "VaultLease", "VaultLoginError"]

log = logging.getLogger("sa_token")

METHODS = ("kubernetes", "jwt")
FORBIDDEN = 403
# Answers after which the same call may succeed later: too many requests, a proxy without a
# backend, sealed or standby. (OpenBao answers 500 "past the max TTL" to a renewal it refuses.)
RETRY_LATER = frozenset({429, 502, 503, 504})
# Vault's error text is shown up to this length (with its JWT-shaped runs replaced): enough for
# any of Vault's messages, short of flooding a log line with a proxy's HTML page.
MAX_SHOWN_ERROR = 600
# Seconds to wait for Vault: hvac's own default.
DEFAULT_TIMEOUT = 30
# Retries while Vault is unreachable wait at most this long: Vault Agent's cap, 5 minutes.
DEFAULT_MAX_BACKOFF = 300.0
# What to check after a refused login, by a fragment of Vault's error text (the first match).
HINTS = (
    ("sealed", "Vault is sealed: unseal it"),
    ("role", "check that the role exists: `vault read auth/{mount}/role/{role}` (role=)"),
    ("audience", "the token is for audience {aud}: check the role's audience (jwt: bound_audiences) "
                 "and serviceAccountToken.audience in the pod's projected volume"),
    ("not authorized|subject|claim", "the token is for {sub}: check the role's "
                                     "bound_service_account_names and bound_service_account_namespaces "
                                     "(jwt: bound_subject, bound_claims)"),
    ("no handler|unsupported path", "no auth method is mounted at auth/{mount}: check mount_point="),
    ("permission denied", "Vault's TokenReview of the token failed: check auth/{mount}/config "
                          "(kubernetes_host, kubernetes_ca_cert, a token_reviewer_jwt allowed to create "
                          "TokenReviews) and that the pod still exists; Vault's log says more"),
    ("", "check the role {role!r} and auth/{mount}/config"),
)


class VaultLoginError(ExchangeError):
    """No valid Vault token: the login failed, or none could be attempted.

    The message quotes Vault's own error text (also in `server_message`, with the HTTP
    `status`) and says what to check; it never contains a token. `reason` is `"rejected"`
    (wrong role, audience not allowed, service account not bound...), `"unreachable"`,
    `"unavailable"` (sealed, 5xx: `transient` is true for these two) or
    `"projected-token-expired"` (the kubelet has not rotated an expired projected token).
    """

    reason = "rejected"
    platform = "vault"


@dataclass(frozen=True)
class VaultLease:
    """The Vault token held now, without the token itself."""

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

    def __str__(self) -> str:  # for log lines: in words, never the token
        policies = ", ".join(_fmt.text(p) for p in self.policies) or "none"
        return f"a Vault {self.token_type} token, accessor {_fmt.text(self.accessor)}, policies {policies}"


class _Vault:
    """The authenticator (`sa_token._lease.Authenticator`): Vault's calls through hvac's adapter."""

    def __init__(self, url: str, role: str, mount: str, path: str, **adapter: Any) -> None:
        self.url, self.role, self.mount, self.path = url, role, mount, path
        self.adapter = RawAdapter(base_uri=url, token=None, **adapter)
        self.sessions = [self.adapter.session]

    def login(self, tok: Token) -> Grant[_Issued]:
        return self._grant(self._call("log in", f"/v1/auth/{self.mount}/login", None, tok))

    def renew(self, cred: _Issued) -> Grant[_Issued]:
        return self._grant(self._call("renew", "/v1/auth/token/renew-self", cred))

    def valid(self, cred: _Issued) -> bool:
        """False only if Vault says the token itself is invalid: lookup-self answers 403 (its
        text does not tell a policy denial from an invalid token)."""
        try:
            self._call("check", "/v1/auth/token/lookup-self", cred, method="get")
        except VaultLoginError as exc:
            return exc.status != FORBIDDEN
        return True

    def revoke(self, cred: _Issued) -> None:
        self._call("revoke", "/v1/auth/token/revoke-self", cred)

    def error(self, message: str, *, reason: str, transient: bool = False) -> VaultLoginError:
        return VaultLoginError(message, path=self.path, reason=reason, transient=transient)

    def after_fork(self) -> None:  # pooled connections in a forked child are the parent's
        for session in self.sessions:
            session.close()

    def _call(self, what: str, url: str, cred: Optional[_Issued], tok: Optional[Token] = None,
              method: str = "post") -> Any:
        # The token goes straight into the request: no local of this frame holds it.
        failure = None
        try:
            resp = self.adapter.request(method, url, raise_exception=False,
                                        headers={"X-Vault-Token": cred.token} if cred else None,
                                        json={"role": self.role, "jwt": tok.value} if tok else None)
        except requests.RequestException as exc:  # raised below, outside: no chained frames
            failure = f"{type(exc).__name__}: {_fmt.text(exc)}"[:300]
        if failure is not None:
            raise self.error(f"cannot {what} at Vault {self.url}: {failure}; check url= and the network",
                             reason="unreachable", transient=True)
        if resp.ok:
            return resp.json() if resp.content else None
        said = _said(resp)
        busy = resp.status_code in RETRY_LATER or (tok is not None and resp.status_code >= 500)
        hint = "; " + self._hint(said, tok) if tok else ""
        raise VaultLoginError(f"Vault {self.url} refused to {what} (HTTP {resp.status_code}): {said}{hint}",
                              path=self.path, reason="unavailable" if busy else "rejected", transient=busy,
                              status=resp.status_code, server_message=said)

    def _hint(self, said: str, tok: Token) -> str:
        text = said.lower()
        hint = next(h for keys, h in HINTS if any(k in text for k in keys.split("|")))
        return hint.format(mount=self.mount, role=self.role, aud=_fmt.text(list(tok.audiences)),
                           sub=_fmt.text(tok.subject))

    @staticmethod
    def _grant(body: Any) -> Grant[_Issued]:
        auth = body["auth"]
        cred = _Issued(auth["client_token"], auth.get("accessor") or "", tuple(auth.get("policies") or ()),
                       auth.get("token_type") or "service")
        return Grant(cred, float(auth.get("lease_duration") or 0), bool(auth.get("renewable")))


def _said(resp: Any) -> str:
    """What Vault said in a refusal, through the one formatter: a Vault (or a proxy) that
    echoes the login request must not put the projected token into the message, the repr or
    server_message."""
    try:
        errors = resp.json().get("errors") or []
    except ValueError:
        errors = [resp.text]
    said = _fmt.text(" ".join(" ".join(str(e).split()) for e in errors), limit=MAX_SHOWN_ERROR)
    return said or _fmt.text(resp.reason)


class VaultAuth:
    """A Vault token obtained with the projected token of `source`, kept valid in the background.

    Args:
        source: the projected token, for an audience the Vault role accepts.
        url: Vault's address; default `VAULT_ADDR` (read now, as hvac reads it).
        role: the Vault role to log in as.
        method: `"kubernetes"` (Vault asks the API server with a TokenReview) or `"jwt"` (the
            JWT/OIDC method: offline signature checks).
        mount_point: where the auth method is mounted (default: the method's name).
        verify: a CA bundle path, or `False`, as hvac takes it; default `VAULT_CACERT` (or
            `VAULT_CAPATH`), read now, else the system CAs (hvac's convention).
        namespace: a Vault namespace; default `VAULT_NAMESPACE` (read now).
        timeout: seconds to wait for Vault.
        revoke_on_close: [`close`][sa_token.vault.VaultAuth.close] also revokes the token.
        max_backoff: the longest wait, in seconds, between retries while Vault is unreachable.

    Raises:
        VaultLoginError: the first login failed (the constructor logs in).
        ConfigurationError: no `url` and no `VAULT_ADDR`.
    """

    def __init__(self, source: TokenSource, *, url: Optional[str] = None, role: str,
                 method: str = "kubernetes", mount_point: Optional[str] = None,
                 verify: Union[bool, str, None] = None, namespace: Optional[str] = None,
                 timeout: float = DEFAULT_TIMEOUT, revoke_on_close: bool = False,
                 max_backoff: float = DEFAULT_MAX_BACKOFF) -> None:
        source = require_source(source, "sa_token.vault.VaultAuth()")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {method!r}")
        url = url or os.environ.get("VAULT_ADDR")
        if not url:
            raise ConfigurationError("Vault: its address: pass url=, or set VAULT_ADDR (it is not set)")
        if verify is None:  # hvac's order: VAULT_CACERT over VAULT_CAPATH, else verify
            verify = os.environ.get("VAULT_CACERT") or os.environ.get("VAULT_CAPATH") or True
        namespace = namespace or os.environ.get("VAULT_NAMESPACE") or None
        self.source, self.url, self.role, self.method = source, url.rstrip("/"), role, method
        self.mount_point = (mount_point or method).strip("/")
        self.revoke_on_close = revoke_on_close
        self._hvac: dict[str, Any] = {"verify": verify, "namespace": namespace, "timeout": timeout}
        self._vault = _Vault(self.url, role, self.mount_point, source.path, **self._hvac)
        self._client: Optional[hvac.Client] = None
        self._client_lock = threading.Lock()
        # OpenBao's Kubernetes method reviews the login-time projected token at every renewal.
        self._keeper: LeaseKeeper[_Issued] = LeaseKeeper(
            source, self._vault, name=f"Vault {self.url} role {role!r} (auth/{self.mount_point})",
            renewal_needs_login_token=method == "kubernetes", backoff_max=max_backoff,
            on_late=self._late_login)
        track_credential(self)

    def client(self) -> hvac.Client:
        """The `hvac.Client` of this login (one per `VaultAuth`): each request carries the
        current Vault token. A 403 because that token is no longer valid (revoked, Vault
        restarted) leads to one new login and one retry; a policy denial is raised as is. Do not
        set `client.token` or log in through it."""
        with self._client_lock:
            if self._client is None:
                adapter = functools.partial(_Adapter, vault=self)  # hvac calls it like a class
                self._client = hvac.Client(url=self.url, token="", adapter=adapter, **self._hvac)  # type: ignore[arg-type]
                self._vault.sessions.append(self._client.session)
            return self._client

    def token(self) -> str:
        """The current Vault token. Waits only when no valid token is held (for a login)."""
        return self._keeper.current().credential.token

    async def atoken(self) -> str:
        """[`token`][sa_token.vault.VaultAuth.token] for asyncio: never blocks the event loop."""
        lease = self._keeper.current_nowait()
        if lease is not None:
            return lease.credential.token
        import asyncio  # here: most users never need it

        return await asyncio.get_running_loop().run_in_executor(None, self.token)

    @property
    def lease(self) -> VaultLease:
        """The Vault token held now: accessor, policies, expiry, renewable."""
        lease = self._keeper.peek() or self._keeper.current()
        cred, exp = lease.credential, lease.expires_at
        expires_at = datetime.fromtimestamp(exp, timezone.utc) if math.isfinite(exp) else None
        return VaultLease(cred.accessor, cred.policies, expires_at, lease.renewable, cred.token_type)

    def close(self) -> None:
        """Stop renewing; with `revoke_on_close`, revoke the token this process obtained."""
        lease = self._keeper.close()
        if lease is not None and self.revoke_on_close:
            try:
                self._vault.revoke(lease.credential)
            except VaultLoginError as exc:
                log.warning("sa-token: could not revoke Vault token %s: %s", lease.credential.accessor, exc)
        self._vault.after_fork()  # closes the connections

    def _late_login(self, cred: _Issued) -> None:
        """A login in flight when `close` ran finished after it: nobody holds that token.
        With `revoke_on_close` it is revoked, as the one `close` returned would have been;
        otherwise it is dropped (it expires on its own)."""
        if not self.revoke_on_close:
            return
        try:
            self._vault.revoke(cred)
        except VaultLoginError as exc:
            log.warning("sa-token: could not revoke Vault token %s: %s", _fmt.text(cred.accessor), exc)

    def __enter__(self) -> VaultAuth:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VaultAuth(url={self.url!r}, role={self.role!r}, method={self.method!r}, {self._keeper!r})"

    # The ExchangedCredential protocol of sa_token._observe, for the metrics.
    credential_kind = "vault"

    @property
    def credential_source_path(self) -> Optional[str]:
        return self.source.path

    @property
    def credential_audience(self) -> Optional[str]:
        return self.source.audiences[0] if self.source.audiences else None

    def credential_expires_at(self) -> Optional[float]:
        lease = self._keeper.peek()
        return lease.expires_at if lease is not None and math.isfinite(lease.expires_at) else None

    def _after_403(self, sent: Lease[_Issued]) -> Optional[Lease[_Issued]]:
        """The lease to send a refused request again with, or None for a policy denial."""
        held = self._keeper.current_nowait()
        if held is not None and held.generation != sent.generation:
            return held  # another thread logged in again already
        if self._vault.valid(sent.credential):
            return None
        count_auth_retry("vault")
        return self._keeper.replace(sent)


class _Adapter(JSONAdapter):
    """hvac's JSON adapter with the token of a `VaultAuth`, set per request from the lease (a
    thread-local holds the one being sent); a 403 is checked and retried once."""

    def __init__(self, *args: Any, vault: VaultAuth, **kwargs: Any) -> None:
        self._vault = vault
        self._sending = threading.local()
        super().__init__(*args, **kwargs)

    @property
    def token(self) -> str:  # RawAdapter.request reads it for the X-Vault-Token header
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
            return super(JSONAdapter, self).request(  # RawAdapter's: a Response, never raising
                method, url, headers=dict(headers) if headers else None, raise_exception=False, **kwargs)
        except requests.RequestException as exc:
            error = exc
        finally:
            self._sending.lease = None
        # Raised without the frames below this one: they hold the headers, token included.
        error.__context__ = None
        error.__suppress_context__ = True
        raise error.with_traceback(None)

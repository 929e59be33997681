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
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional, Union

try:
    import hvac
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("sa_token.vault needs the hvac package: pip install 'sa-token[vault]'") from exc

from . import _fmt
from ._lease import Lease, LeaseKeeper
from ._observe import count_auth_retry, track_credential
from ._source import TokenSource, require_source
from ._vault_adapter import _Adapter
from ._vault_login import VaultLoginError, _Issued, _Vault
from .errors import ConfigurationError

__all__ = ["VaultAuth", "VaultLease", "VaultLoginError"]

log = logging.getLogger("sa_token")

METHODS = ("kubernetes", "jwt")
# Seconds to wait for Vault: hvac's own default.
DEFAULT_TIMEOUT = 30
# Retries while Vault is unreachable wait at most this long: Vault Agent's cap, 5 minutes.
DEFAULT_MAX_BACKOFF = 300.0
@dataclass(frozen=True)
class VaultLease:
    """The Vault token held now, without the token itself."""

    accessor: str
    policies: tuple[str, ...]
    expires_at: Optional[datetime]  # aware UTC; None for a token that does not expire
    renewable: bool
    token_type: str  # "service" or "batch"


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

"""Azure (AKS Workload Identity): a `TokenCredential` fed by a [`TokenSource`][sa_token.TokenSource].

```python
from azure.storage.blob import BlobServiceClient
from sa_token.azure import WorkloadIdentityCredential

credential = WorkloadIdentityCredential()   # AZURE_FEDERATED_TOKEN_FILE, AZURE_TENANT_ID, AZURE_CLIENT_ID
BlobServiceClient(account_url, credential=credential)
```

azure-identity's own `WorkloadIdentityCredential` keeps the file's content for 600 s of wall
clock, so it can present a token the kubelet has already replaced, or one that has expired
(`AADSTS700024`). This one is azure-identity's `ClientAssertionCredential` with the current
token as its assertion; the access-token cache and refresh are azure-identity's. The async
twin is `sa_token.azure.aio.WorkloadIdentityCredential`.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional, TypeVar

try:
    from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import ClientAssertionCredential, CredentialUnavailableError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "sa_token.azure needs the azure-identity package: pip install 'sa-token[azure]'"
    ) from exc

from sa_token import _fmt
from sa_token._cloud import (
    CloudCredential,
    ConfigurationError,
    ExchangeError,
    platform_source,
    scrub,
    setting,
)
from sa_token._observe import track_credential
from sa_token._source import TokenSource

__all__ = ["AUDIENCE", "ConfigurationError", "EntraIDError", "ExchangeError", "WorkloadIdentityCredential"]

AUDIENCE = "api://AzureADTokenExchange"  # what the azure-workload-identity webhook projects
_AADSTS = re.compile(r"AADSTS\d+")  # Entra's own code: "AADSTS700024"
_OAUTH = re.compile(r"\((\w+)\)")  # else the OAuth error, as azure-identity words it: "(invalid_client)"
T = TypeVar("T", AccessToken, AccessTokenInfo)


class EntraIDError(ClientAuthenticationError, ExchangeError):
    """Microsoft Entra ID refused the assertion: a `ClientAuthenticationError` that is also an
    [`ExchangeError`][sa_token.errors.ExchangeError] with the `AADSTS` code
    (`AADSTS700024`: not within its valid time range; `AADSTS700212`/`AADSTS70021`: no
    federated credential matches the token's audience, issuer or subject). It carries no
    `response` (its request would hold the token); `.reason` is sa-token's code."""

    reason = "exchange-rejected"

    def __init__(self, message: str, *, code: Optional[str], status: Optional[int], path: str) -> None:
        super().__init__(message=message)
        self._set(path, code, "azure", status)
        self.status_code = status


def failure(exc: ClientAuthenticationError, path: str) -> dict[str, Any]:
    """What to raise for ``exc`` (built by the caller outside its ``except`` block, so that
    azure-core's error does not capture the traceback, whose frames hold the assertion)."""
    # azure-identity's "Microsoft Entra ID error '(error) description'", maybe with a "Content:" line.
    text = scrub(exc.message.splitlines()[0] if exc.message else "").replace("Microsoft Entra ID error ", "")
    found, oauth = _AADSTS.search(text), _OAUTH.search(text)
    code = found.group(0) if found else oauth.group(1) if oauth else None
    where = f"from {_fmt.path(path)} (HTTP {exc.status_code}, {code})"
    return {
        "message": f"Microsoft Entra ID refused the token {where}: {text}",
        "code": code,
        "status": exc.status_code,
        "path": path,
    }


def settings(
    source: Optional[TokenSource], tenant_id: Optional[str], client_id: Optional[str], audience: str
) -> tuple[TokenSource, str, str]:
    """The source (checked for ``audience``), tenant and client id, from the arguments or the
    environment (read now)."""
    return (
        platform_source(
            source, variable="AZURE_FEDERATED_TOKEN_FILE", audience=audience, platform="Microsoft Entra ID"
        ),
        setting(tenant_id, "AZURE_TENANT_ID", "Azure: the tenant id"),
        setting(client_id, "AZURE_CLIENT_ID", "Azure: the application (client) id"),
    )


class Workload(CloudCredential):
    """What the sync and asyncio credentials share: settings, the refusal, the expiry."""

    credential_kind = "azure"

    def __init__(
        self,
        source: Optional[TokenSource] = None,
        *,
        tenant_id: Optional[str] = None,
        client_id: Optional[str] = None,
        audience: str = AUDIENCE,
        **kwargs: Any,
    ) -> None:
        # Tenant, client and the assertion function (the current token, or a TokenError; never
        # an expired token) for the ``ClientAssertionCredential`` this is mixed into.
        self.source, tenant, client = settings(source, tenant_id, client_id, audience)
        self.audience = audience
        super().__init__(tenant, client, self.source.token, **kwargs)  # type: ignore[call-arg]
        track_credential(self)

    def __repr__(self) -> str:
        where = "aio." if type(self).__module__.endswith(".aio") else ""
        return f"{where}WorkloadIdentityCredential(source={self.source!r})"

    def _granted(self, token: T) -> T:
        self._expires_at = float(token.expires_on)
        return token

    def _refused(self, exc: ClientAuthenticationError) -> dict[str, Any]:
        return failure(exc, self.source.path)


class WorkloadIdentityCredential(Workload, ClientAssertionCredential):
    """A `TokenCredential` that presents the current projected token to Microsoft Entra ID.

    Args:
        source: the token source; `None` opens `AZURE_FEDERATED_TOKEN_FILE`.
        tenant_id: default `AZURE_TENANT_ID`.
        client_id: default `AZURE_CLIENT_ID`.
        audience: the audience the token must carry (`api://AzureADTokenExchangeChina`,
            `...USGov` in the national clouds).
        **kwargs: for `ClientAssertionCredential`: `authority` (default
            `AZURE_AUTHORITY_HOST`), transport options.

    Raises:
        ConfigurationError: a setting is missing (the message names its variable).
        AudienceMismatchError: the token is not for `audience`.
    """


    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return self._observed(super().get_token, *scopes, **kwargs)

    def get_token_info(self, *scopes: str, options: Optional[TokenRequestOptions] = None) -> AccessTokenInfo:
        return self._observed(super().get_token_info, *scopes, options=options)

    def _observed(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            token = call(*args, **kwargs)
        except CredentialUnavailableError:
            raise
        except ClientAuthenticationError as exc:
            refused = self._refused(exc)  # raised below, outside the handler: no traceback kept
        else:
            return self._granted(token)
        raise EntraIDError(**refused) from None

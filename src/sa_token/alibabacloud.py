"""Alibaba Cloud (ACK RRSA): `AssumeRoleWithOIDC` fed by a [`TokenSource`][sa_token.TokenSource].

```python
from alibabacloud_credentials.client import Client
from sa_token.alibabacloud import RRSACredentialsProvider

credential = Client(provider=RRSACredentialsProvider())   # ALIBABA_CLOUD_* variables, read now
credential.get_credential().access_key_id
```

Unlike the SDK's `OIDCRoleArnCredentialsProvider`, the variables are read when the provider
is built (not when `alibabacloud_credentials` is imported), the token is checked (audience
`sts.aliyuncs.com`, expiry) and it travels in the POST body, never in the URL that proxies,
`DEBUG=sdk` and connection errors show. Caching and refresh are the SDK's
`RefreshCachedSupplier` (refreshed 15 minutes before expiry, as upstream).
"""

from __future__ import annotations

import calendar
import json
import os
import time
from typing import Any, Optional
from urllib.parse import urlencode

try:
    from alibabacloud_credentials.exceptions import CredentialException
    from alibabacloud_credentials.provider.refreshable import (
        Credentials,
        RefreshCachedSupplier,
        RefreshResult,
    )
    from alibabacloud_credentials_api import ICredentialsProvider
    from Tea.core import TeaCore
    from Tea.request import TeaRequest
    from Tea.response import TeaResponse
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "sa_token.alibabacloud needs the alibabacloud-credentials package: "
        "pip install 'sa-token[alibabacloud]'"
    ) from exc

from . import _clock, _fmt
from ._cloud import CloudCredential, ConfigurationError, ExchangeError, platform_source, scrub, setting
from ._observe import track_credential
from ._source import TokenSource

__all__ = ["AUDIENCE", "ConfigurationError", "ExchangeError", "RRSACredentialsProvider", "STSError"]

AUDIENCE = "sts.aliyuncs.com"  # what ack-pod-identity-webhook puts in the projected token
DURATION_SECONDS = 3600  # the SDK's default session length (the minimum RAM allows is 900)
STALE_BEFORE = 15 * 60  # refresh this long before expiry, as the SDK's OIDC provider does
TIMEOUTS = {"connectTimeout": 5000, "readTimeout": 10000}  # milliseconds, the SDK's defaults


def _regional_endpoint() -> str:
    """``sts[-vpc].<ALIBABA_CLOUD_STS_REGION>.aliyuncs.com``, else the global endpoint."""
    region = os.environ.get("ALIBABA_CLOUD_STS_REGION")
    vpc = os.environ.get("ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED", "").lower() == "true"
    return f"sts{'-vpc' if vpc else ''}.{region}.aliyuncs.com" if region else "sts.aliyuncs.com"


class STSError(CredentialException, ExchangeError):  # type: ignore[misc]
    """STS refused the token: a `CredentialException` whose `code` is Alibaba's `Code`
    (`AuthenticationFail.OIDCToken.Expired`, `...AudienceNotMatch`, `AuthenticationFail.NoPermission`...)
    and an [`ExchangeError`][sa_token.errors.ExchangeError]."""

    reason = "exchange-rejected"

    def __init__(
        self, message: str, *, code: Optional[str], status: int, path: str, request_id: Optional[str]
    ):
        ExchangeError.__init__(self, message, path=path, code=code, platform="alibabacloud", status=status)
        CredentialException.__init__(self, message, code=code, request_id=request_id)


class RRSACredentialsProvider(CloudCredential, ICredentialsProvider):  # type: ignore[misc]
    """An `ICredentialsProvider` for `alibabacloud_credentials.client.Client(provider=...)`.

    Args:
        source: the token source; `None` opens `ALIBABA_CLOUD_OIDC_TOKEN_FILE`.
        role_arn: default `ALIBABA_CLOUD_ROLE_ARN`.
        oidc_provider_arn: default `ALIBABA_CLOUD_OIDC_PROVIDER_ARN`.
        role_session_name: default `ALIBABA_CLOUD_ROLE_SESSION_NAME`, else `sa-token-<time>`.
        duration_seconds: the credentials' lifetime (900 to the role's maximum).
        sts_endpoint: host (and port) of the STS, always https; default
            `ALIBABA_CLOUD_STS_ENDPOINT`, else `sts.<ALIBABA_CLOUD_STS_REGION>.aliyuncs.com`
            (`sts-vpc.` with `ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED=true`), else `sts.aliyuncs.com`.
        audience: the audience the token must carry.

    Raises:
        ConfigurationError: a setting is missing (the message names its variable).
        AudienceMismatchError: the token is not for `audience`.
    """

    credential_kind = "alibabacloud"

    def __init__(
        self,
        source: Optional[TokenSource] = None,
        *,
        role_arn: Optional[str] = None,
        oidc_provider_arn: Optional[str] = None,
        role_session_name: Optional[str] = None,
        duration_seconds: int = DURATION_SECONDS,
        sts_endpoint: Optional[str] = None,
        audience: str = AUDIENCE,
    ) -> None:
        platform = "Alibaba Cloud STS"
        self.source = platform_source(source, variable="ALIBABA_CLOUD_OIDC_TOKEN_FILE", audience=audience,
                                      platform=platform)
        self.audience = audience
        idp = "RRSA: the OIDC provider"
        self._form = {
            "RoleArn": setting(role_arn, "ALIBABA_CLOUD_ROLE_ARN", "RRSA: the role to assume"),
            "OIDCProviderArn": setting(oidc_provider_arn, "ALIBABA_CLOUD_OIDC_PROVIDER_ARN", idp),
            "RoleSessionName": role_session_name or os.environ.get("ALIBABA_CLOUD_ROLE_SESSION_NAME")
            or f"sa-token-{int(_clock.wall())}",
            "DurationSeconds": str(duration_seconds),
        }
        endpoint = os.environ.get("ALIBABA_CLOUD_STS_ENDPOINT")  # as ack-ram-tool reads it
        self.sts_endpoint = sts_endpoint or endpoint or _regional_endpoint()
        self._cache = RefreshCachedSupplier(
            refresh_callable=self._refresh, refresh_callable_async=self._refresh_async
        )
        track_credential(self)

    def __repr__(self) -> str:
        return f"RRSACredentialsProvider(source={self.source!r}, sts_endpoint={self.sts_endpoint!r})"

    def get_credentials(self) -> Credentials:
        return self._cache._sync_call()  # the SDK's own cache, as its providers call it

    async def get_credentials_async(self) -> Credentials:
        return await self._cache._async_call()

    def get_provider_name(self) -> str:
        return "oidc_role_arn"  # the credential type the SDK's OIDC provider reports

    def _request(self) -> TeaRequest:
        request = TeaRequest()
        request.method, request.protocol = "POST", "https"
        form = "application/x-www-form-urlencoded"
        request.headers.update({"host": self.sts_endpoint, "content-type": form})
        query = {"Action": "AssumeRoleWithOIDC", "Format": "JSON", "Version": "2015-04-01"}
        request.query = {**query, "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        return request

    # The token goes straight into the form body: no frame of ours holds it in a local.
    def _refresh(self) -> RefreshResult[Credentials]:
        request = self._request()
        request.body = urlencode({**self._form, "OIDCToken": self.source.token()})
        return self._result(TeaCore.do_action(request, TIMEOUTS))

    async def _refresh_async(self) -> RefreshResult[Credentials]:
        request = self._request()
        request.body = urlencode({**self._form, "OIDCToken": await self.source.atoken()})
        return self._result(await TeaCore.async_do_action(request, TIMEOUTS))

    def _result(self, response: TeaResponse) -> RefreshResult[Credentials]:
        try:
            answer: Any = json.loads(response.body.decode("utf-8"))
        except ValueError:  # a proxy's HTML page, say
            answer = None
        answer = answer if isinstance(answer, dict) else {}
        cred = answer.get("Credentials") if response.status_code == 200 else None
        if not isinstance(cred, dict):
            code, why = scrub(answer.get("Code")), scrub(answer.get("Message", ""))
            raise STSError(
                f"Alibaba Cloud STS refused the token from {_fmt.path(self.source.path)} "
                f"(HTTP {response.status_code}, {code}): {why}", code=answer.get("Code"),
                status=response.status_code, path=self.source.path, request_id=answer.get("RequestId"),
            )
        expiration = calendar.timegm(time.strptime(cred["Expiration"], "%Y-%m-%dT%H:%M:%SZ"))
        self._expires_at = float(expiration)
        value = Credentials(
            access_key_id=cred["AccessKeyId"], access_key_secret=cred["AccessKeySecret"],
            security_token=cred["SecurityToken"], expiration=expiration,
            provider_name=self.get_provider_name(),
        )
        return RefreshResult(value=value, stale_time=expiration - STALE_BEFORE)

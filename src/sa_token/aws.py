"""AWS (EKS IRSA): `AssumeRoleWithWebIdentity` fed by a [`TokenSource`][sa_token.TokenSource].

```python
from sa_token.aws import boto3_session

session = boto3_session()        # AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN, AWS_ROLE_SESSION_NAME
session.client("s3").list_buckets()
```

botocore's own machinery does the exchange and the refresh (`RefreshableCredentials`: an
advisory refresh 15 minutes before expiry, a blocking one at 10 minutes); this module only
hands it the current token and translates a refusal into [`STSError`][sa_token.aws.STSError].
"""

from __future__ import annotations

import os
from typing import Any, Optional

try:
    import boto3
    import botocore.session
    from botocore.credentials import (
        AssumeRoleWithWebIdentityCredentialFetcher,
        CredentialProvider,
        CredentialResolver,
        DeferredRefreshableCredentials,
    )
    from botocore.exceptions import ClientError
    from botocore.utils import parse_timestamp
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("sa_token.aws needs the boto3 package: pip install 'sa-token[aws]'") from exc

from . import _fmt
from ._cloud import CloudCredential, ConfigurationError, ExchangeError, platform_source, scrub, setting
from ._observe import track_credential
from ._source import TokenSource

__all__ = [
    "AUDIENCE",
    "ConfigurationError",
    "ExchangeError",
    "STSError",
    "WebIdentityCredentials",
    "boto3_session",
    "install",
]

AUDIENCE = "sts.amazonaws.com"  # what the EKS Pod Identity webhook puts in the projected token


class STSError(ClientError, ExchangeError):  # type: ignore[misc]
    """STS refused the web identity token: a botocore `ClientError` (same `response`, same
    code: `InvalidIdentityToken`, `ExpiredTokenException`, `AccessDenied`...) that is also an
    [`ExchangeError`][sa_token.errors.ExchangeError] naming the token file."""

    reason = "exchange-rejected"

    def __init__(self, error_response: dict[str, Any], operation_name: str, *, path: Optional[str] = None):
        ClientError.__init__(self, error_response, operation_name)  # runs ExchangeError.__init__ too
        status = error_response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        self._set(path, error_response.get("Error", {}).get("Code"), "aws", status)
        self.message = f"{self.args[0]} (web identity token from {_fmt.path(path)})"


def _safe(response: dict[str, Any]) -> dict[str, Any]:
    """The error part of an STS response, its message scrubbed."""
    err = response.get("Error", {})
    safe = {"Code": err.get("Code"), "Message": scrub(err.get("Message", "")), "Type": err.get("Type")}
    return {"Error": safe, "ResponseMetadata": response.get("ResponseMetadata", {})}


class WebIdentityCredentials(CloudCredential, CredentialProvider):  # type: ignore[misc]
    """What [`install`][sa_token.aws.install] puts into a botocore session: the credential
    provider of its chain, whose `credentials` botocore refreshes; also what the metrics
    report (`credential_expires_at()`)."""

    METHOD = "sa-token-web-identity"  # botocore's name for where credentials came from
    credential_kind = "aws"

    def __init__(
        self,
        botocore_session: botocore.session.Session,
        source: TokenSource,
        *,
        role_arn: str,
        audience: str = AUDIENCE,
        session_name: Optional[str] = None,
        region_name: Optional[str] = None,
        duration_seconds: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.source, self.audience = source, audience
        extra: dict[str, Any] = {"RoleSessionName": session_name} if session_name else {}
        if duration_seconds is not None:
            extra["DurationSeconds"] = duration_seconds
        self._fetcher = AssumeRoleWithWebIdentityCredentialFetcher(
            client_creator=lambda name, **kw: botocore_session.create_client(
                name, region_name=region_name, **kw
            ),
            web_identity_token_loader=source.token,  # the current token or a TokenError, never an expired one
            role_arn=role_arn,
            extra_args=extra,
        )
        self.credentials = DeferredRefreshableCredentials(refresh_using=self._refresh, method=self.METHOD)
        track_credential(self)

    def __repr__(self) -> str:
        return f"WebIdentityCredentials(source={self.source!r})"

    def load(self) -> DeferredRefreshableCredentials:
        return self.credentials

    def _refresh(self) -> dict[str, Any]:
        try:
            fresh: dict[str, Any] = self._fetcher.fetch_credentials()
        except ClientError as exc:
            refused = (_safe(exc.response), exc.operation_name)
        else:
            self._expires_at = parse_timestamp(fresh["expiry_time"]).timestamp()
            return fresh
        # Raised outside the handler: botocore's frames, which hold the token, stay unattached.
        raise STSError(*refused, path=self.source.path) from None


def install(
    botocore_session: botocore.session.Session,
    source: Optional[TokenSource],
    *,
    role_arn: Optional[str] = None,
    session_name: Optional[str] = None,
    region_name: Optional[str] = None,
    duration_seconds: Optional[int] = None,
    audience: str = AUDIENCE,
) -> WebIdentityCredentials:
    """Make `botocore_session` assume `role_arn` with the tokens of `source`.

    It replaces the session's credential chain: call it before creating clients.

    Args:
        botocore_session: the session to install into.
        source: the token source; `None` opens `AWS_WEB_IDENTITY_TOKEN_FILE` (read now).
        role_arn: the role to assume; default `AWS_ROLE_ARN`.
        session_name: default `AWS_ROLE_SESSION_NAME`, else botocore's `botocore-session-<time>`.
        region_name: the STS region; default the session's.
        duration_seconds: the credentials' lifetime; default the role's (1 hour).
        audience: the audience the token must carry.

    Raises:
        ConfigurationError: a setting is missing (the message names its variable).
        AudienceMismatchError: the token is not for `audience`.
    """
    variable = "AWS_WEB_IDENTITY_TOKEN_FILE"
    source = platform_source(source, variable=variable, audience=audience, platform="AWS STS")
    provider = WebIdentityCredentials(
        botocore_session, source, role_arn=setting(role_arn, "AWS_ROLE_ARN", "AWS: the role to assume"),
        audience=audience, session_name=session_name or os.environ.get("AWS_ROLE_SESSION_NAME"),
        region_name=region_name, duration_seconds=duration_seconds,
    )
    botocore_session.register_component("credential_provider", CredentialResolver([provider]))
    return provider


def boto3_session(
    source: Optional[TokenSource] = None,
    *,
    role_arn: Optional[str] = None,
    session_name: Optional[str] = None,
    region_name: Optional[str] = None,
    duration_seconds: Optional[int] = None,
    audience: str = AUDIENCE,
) -> boto3.Session:
    """A `boto3.Session` whose credentials come from `AssumeRoleWithWebIdentity` with the
    tokens of `source`; arguments as for [`install`][sa_token.aws.install]. `region_name` is
    also the session's region (default `AWS_REGION`, then `AWS_DEFAULT_REGION`, read now: what
    the EKS Pod Identity webhook sets and the AWS SDKs read; boto3 alone reads only the second)."""
    region_name = region_name or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    core = botocore.session.Session()
    install(core, source, role_arn=role_arn, session_name=session_name, region_name=region_name,
            duration_seconds=duration_seconds, audience=audience)
    return boto3.Session(botocore_session=core, region_name=region_name)

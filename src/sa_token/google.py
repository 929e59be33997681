"""Google Cloud (workload identity federation): a google-auth `SubjectTokenSupplier` fed by a
[`TokenSource`][sa_token.TokenSource].

```python
from sa_token.google import SubjectTokenSupplier

supplier = SubjectTokenSupplier()      # the credential configuration in GOOGLE_APPLICATION_CREDENTIALS
credentials = supplier.credentials()   # google.auth identity_pool credentials using it
storage.Client(project="my-project", credentials=credentials)
```

google-auth calls the supplier on every refresh of its access token (refreshed before expiry
by google-auth itself) and exchanges the token at the STS named by the configuration's
`token_url`. The audience the projected token must carry is the workload identity pool
provider's: by default `https:` followed by the configuration's `audience`
(`https://iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/K`);
pass `audience=` if the provider lists other allowed audiences.
"""

from __future__ import annotations

import json
from datetime import timezone
from typing import Any, Optional

try:
    from google.auth import exceptions, identity_pool
    from google.auth.transport import Request
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "sa_token.google needs the google-auth package: pip install 'sa-token[google]'"
    ) from exc

from . import _fmt
from ._cloud import ConfigurationError, ExchangeError, platform_source, scrub, setting
from ._observe import track_credential
from ._source import TokenSource, require_source

__all__ = ["ConfigurationError", "Credentials", "ExchangeError", "STSError", "SubjectTokenSupplier"]

# What google.auth.default() asks for when an application gives no scopes for these credentials.
DEFAULT_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


class STSError(exceptions.OAuthError, ExchangeError):
    """Google's STS refused the token: an `OAuthError` (what google-auth raises) that is also
    an [`ExchangeError`][sa_token.errors.ExchangeError] whose `code` is the OAuth error
    (`invalid_grant`: wrong audience, expired, unknown issuer; `invalid_request`...)."""

    reason = "exchange-rejected"

    def __init__(self, message: str, *, code: Optional[str], path: Optional[str]) -> None:
        super().__init__(message)  # type: ignore[no-untyped-call]
        self._set(path, code, "google", None)
        self.message = message


def _load(config: Optional[str]) -> tuple[str, dict[str, Any]]:
    path = setting(config, "GOOGLE_APPLICATION_CREDENTIALS", "Google: the credential configuration file")
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        return path, dict(info)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"Google credential configuration {_fmt.path(path)} is unusable: {_fmt.text(exc)}", path=path
        ) from None


class SubjectTokenSupplier(identity_pool.SubjectTokenSupplier):
    """Supplies the current projected token to `google.auth.identity_pool.Credentials`.

    Args:
        source: the token source; `None` opens the configuration's `credential_source.file`.
        audience: the audience the token must carry; default: the one audience `source` is bound
            to, else `https:` + the configuration's `audience`.
        config: the credential configuration (JSON, `type: external_account`); default
            `GOOGLE_APPLICATION_CREDENTIALS`, read now. Only needed without a `source`, for a
            source bound to no or several audiences without `audience`, or for
            [`credentials`][sa_token.google.SubjectTokenSupplier.credentials].

    Raises:
        ConfigurationError: no or an unusable configuration (the message names it).
        AudienceMismatchError: the token is not for `audience`.
    """

    def __init__(
        self,
        source: Optional[TokenSource] = None,
        *,
        audience: Optional[str] = None,
        config: Optional[str] = None,
    ) -> None:
        source = require_source(source, "sa_token.google.SubjectTokenSupplier()")
        self._config = config
        self._info: Optional[dict[str, Any]] = None
        audience = audience or _bound_audience(source)
        if source is None or audience is None:
            self._config, self._info = _load(config)
        info = self._info or {}
        self.audience = audience or _provider(info)
        if not self.audience:
            raise ConfigurationError(
                f"Google: no audience: pass audience= or set it in {_fmt.path(self._config)}"
            )
        token_file = (info.get("credential_source") or {}).get("file") if source is None else None
        self.source = platform_source(
            source,
            audience=self.audience,
            platform="Google STS",
            variable="credential_source.file",
            path=token_file,
        )

    def __repr__(self) -> str:
        return f"SubjectTokenSupplier(source={self.source!r}, audience={self.audience!r})"

    def get_subject_token(self, context: Any, request: Request) -> str:  # noqa: ARG002 - google-auth's signature
        return self.source.token()  # the current token, or a TokenError: never an expired one

    def credentials(self, *, scopes: Optional[list[str]] = None, **kwargs: Any) -> Credentials:
        """`Credentials` built from the configuration (`token_url`, impersonation...), with this
        supplier in place of its `credential_source`; `kwargs` go to the constructor."""
        if self._info is None:
            self._config, self._info = _load(self._config)
        info = {k: v for k, v in self._info.items() if k != "credential_source"}
        # In the info too: older google-auth (2.50, the newest on Python 3.9) reads it only there.
        info["subject_token_supplier"] = self
        creds: Credentials = Credentials.from_info(  # type: ignore[no-untyped-call]
            info, subject_token_supplier=self, scopes=scopes or list(DEFAULT_SCOPES), **kwargs
        )
        return creds


def _bound_audience(source: Optional[TokenSource]) -> Optional[str]:
    """A source bound to one audience: that is the provider's audience."""
    bound = getattr(source, "audiences", None)
    return bound[0] if bound is not None and len(bound) == 1 else None


def _provider(info: dict[str, Any]) -> str:
    """The configuration's audience (``//iam.googleapis.com/...`` as an ``https:`` URL)."""
    provider = str(info.get("audience") or "")
    return "https:" + provider if provider.startswith("//") else provider


class Credentials(identity_pool.Credentials):
    """google-auth identity-pool credentials that raise [`STSError`][sa_token.google.STSError]
    for a refused exchange and report their expiry to the metrics."""

    credential_kind = "google"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        supplier = kwargs.get("subject_token_supplier")
        self._supplier = supplier if isinstance(supplier, SubjectTokenSupplier) else None
        track_credential(self)

    def refresh(self, request: Request) -> None:
        try:
            super().refresh(request)  # type: ignore[no-untyped-call]
        except exceptions.OAuthError as exc:
            try:
                code = json.loads(exc.args[1]).get("error")
            except (IndexError, TypeError, ValueError, AttributeError):
                code = None
            path = self.credential_source_path or "the subject token"
            refused = {
                "message": f"Google STS refused the token from {_fmt.path(path)}: {scrub(exc.args[0])}",
                "code": code,
            }
        else:
            return
        raise STSError(**refused, path=self.credential_source_path) from None

    @property
    def credential_source_path(self) -> Optional[str]:
        return self._supplier.source.path if self._supplier else None

    @property
    def credential_audience(self) -> Optional[str]:
        return self._supplier.audience if self._supplier else None

    def credential_expires_at(self) -> Optional[float]:
        expiry = self.expiry  # naive UTC, as google-auth keeps it
        return None if expiry is None else expiry.replace(tzinfo=timezone.utc).timestamp()

"""What the cloud integrations (`sa_token.aws`, `.alibabacloud`, `.azure`, `.google`) share.

* `platform_source`: the `TokenSource` an integration exchanges, built from the platform's
  standard environment variable (read when called, not at import) or checked when passed in:
  a token for another audience fails here, naming the audience the platform needs.
* `setting`: an option or its environment variable; a missing one names the variable.
* `ExchangeError`: a token service refused the exchange. Each integration raises a subclass
  that is also its SDK's own error type, so existing ``except`` clauses keep working.
* `scrub`: a server's error text made safe to show (no JWT, no control characters, bounded).
"""

from __future__ import annotations

import os
from typing import Optional

from . import _fmt
from ._source import TokenSource, require_source
from ._validity import Expectations, binding_error
from .errors import AudienceMismatchError, ConfigurationError, ExchangeError

__all__ = ["CloudCredential", "ConfigurationError", "ExchangeError", "platform_source", "scrub", "setting"]

# A server's error text is shown up to this length: enough for any STS message (AADSTS texts
# run to about 400 characters with their trace ids), short of flooding a log line.
MAX_SHOWN_ERROR = 600


class CloudCredential:
    """What the metrics read of a cloud credential (`sa_token._observe.track_credential`),
    from its ``source``, ``audience`` and ``_expires_at`` (set when the cloud answers)."""

    credential_kind = ""  # "aws", "azure", ...: the metrics label
    source: TokenSource
    audience: str
    _expires_at: Optional[float] = None  # POSIX seconds, once the cloud granted credentials

    @property
    def credential_source_path(self) -> Optional[str]:
        return self.source.path

    @property
    def credential_audience(self) -> Optional[str]:
        return self.audience

    def credential_expires_at(self) -> Optional[float]:
        return self._expires_at


def scrub(text: object) -> str:
    """A service's error text, safe to show: JWTs replaced, control characters escaped, cut to
    `MAX_SHOWN_ERROR` characters."""
    return _fmt.text(text, limit=MAX_SHOWN_ERROR)


def setting(value: Optional[str], variable: str, what: str) -> str:
    """``value``, else the environment variable (read now), else a `ConfigurationError`."""
    if value:
        return value
    found = os.environ.get(variable)
    if not found:
        raise ConfigurationError(f"{what}: pass it, or set {variable} (it is not set)")
    return found


def platform_source(
    source: Optional[TokenSource],
    *,
    audience: str,
    platform: str,
    variable: str = "",
    path: Optional[str] = None,
) -> TokenSource:
    """``source`` checked for ``audience``, or a new `TokenSource` expecting ``audience`` on
    ``path`` (default: the file named by the environment variable ``variable``)."""
    source = require_source(source, f"the {platform} credentials")
    needs = f"{platform} needs a projected token for audience {audience!r}"
    if source is None:
        path = path or setting(None, variable, f"{platform}: the projected token file")
        try:
            return TokenSource(path, audience=audience)
        except AudienceMismatchError as exc:
            raise AudienceMismatchError(f"{needs}: {exc}", path=exc.path) from None
    problem = binding_error(source.current(), Expectations(audiences=(audience,)), source.path)
    if problem is not None:
        raise AudienceMismatchError(f"{needs}: {problem}", path=source.path)
    return source

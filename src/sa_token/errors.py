"""The errors sa-token raises.

One small hierarchy; every message names the file and the cause, says what to do, and never
contains the token:

```text
TokenError                          base of everything below
├── TokenFileError                  (also an OSError) missing, unreadable, empty, oversized
├── MalformedTokenError             (also a ValueError) not a JWT, bad base64 or JSON,
│                                   claims of the wrong type
├── TokenValidationError            the token parsed but must not be used
│   ├── TokenExpiredError           ``exp`` has passed
│   ├── TokenNotYetValidError       ``nbf``/``iat`` lies in the future beyond the leeway
│   ├── AudienceMismatchError       ``aud`` does not contain the expected audience
│   └── IssuerMismatchError         ``iss`` is not the expected issuer
├── ExchangeError                   a login or token exchange failed: Vault's login
│   │                               (``VaultLoginError``), a cloud token service (``STSError``,
│   │                               ``EntraIDError``); ``transient``: unreachable, sealed, 5xx
├── ConfigurationError              (also a ValueError) a required setting is neither passed
│                                   nor in its environment variable
└── ThreadStartError                (also a RuntimeError) a thread sa-token needs cannot start
                                    (a pids or RLIMIT_NPROC limit); tried again at the next use
```

``TokenFileError`` subclasses ``OSError`` and ``MalformedTokenError`` subclasses ``ValueError``
so that existing ``except OSError:`` / ``except ValueError:`` clauses keep working.

Every error has a ``reason``: a short, stable code (``"missing"``, ``"expired"``,
``"audience-mismatch"``...) for programs, metrics labels and log de-duplication; the message is
for people and may change.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: this module is on `sa-token check`'s path (an exec probe)
if TYPE_CHECKING:
    from datetime import datetime
    from typing import Any, Optional

__all__ = [
    "AudienceMismatchError",
    "ConfigurationError",
    "ExchangeError",
    "IssuerMismatchError",
    "MalformedTokenError",
    "TokenError",
    "TokenExpiredError",
    "TokenFileError",
    "TokenNotYetValidError",
    "TokenValidationError",
    "ThreadStartError",
]


class TokenError(Exception):
    """Base class of every error sa-token raises.

    ``path`` is the token file the error is about (``None`` when a token string was parsed
    without a file). ``reason`` is a short, stable code for the cause.
    """

    reason = "error"
    """A short, stable code for the cause (the class default, or a finer one per instance)."""

    def __init__(self, message: str, *, path: Optional[str] = None, reason: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        if reason is not None:
            self.reason = reason

    def __str__(self) -> str:
        return self.message

    def _extra(self) -> dict[str, object]:
        return {"reason": self.reason}

    def __reduce__(self) -> tuple[object, ...]:  # keep pickling (multiprocessing) working
        return (_rebuild, (type(self), self.message, self.path, self._extra()))


class TokenFileError(TokenError, OSError):
    """The token file is missing, unreadable, empty, not a regular file or far too large.

    Also an ``OSError``: ``errno`` carries the operating system's error number when there was
    one (``None`` for an empty or oversized file). ``reason`` is one of ``"missing"``,
    ``"permission-denied"``, ``"is-a-directory"``, ``"not-a-file"``, ``"empty"``,
    ``"too-large"``, ``"symlink-loop"``, ``"not-a-path"`` (a token was passed instead of its
    path) or ``"unreadable"``.
    """

    reason = "unreadable"

    def __init__(
        self,
        message: str,
        *,
        path: Optional[str] = None,
        errno: Optional[int] = None,
        reason: Optional[str] = None,
    ) -> None:
        TokenError.__init__(self, message, path=path, reason=reason)
        self.errno = errno
        self.filename = path

    def __str__(self) -> str:
        return self.message

    def _extra(self) -> dict[str, object]:
        return {"reason": self.reason, "errno": self.errno}


class MalformedTokenError(TokenError, ValueError):
    """The file's content is not a usable JWT: wrong shape, bad base64 or JSON, or claims of
    the wrong type (``exp`` as a string, ``aud`` as a number...). Also a ``ValueError``."""

    reason = "malformed"


class TokenValidationError(TokenError):
    """The token parsed, but its claims say it must not be used now or here."""

    reason = "invalid"


class TokenExpiredError(TokenValidationError):
    """The token's ``exp`` has passed: the kubelet should have rotated it long before.

    ``expires_at`` is the expiry as an aware UTC datetime.
    """

    reason = "expired"

    def __init__(
        self,
        message: str,
        *,
        path: Optional[str] = None,
        expires_at: Optional[datetime] = None,
        reason: Optional[str] = None,
    ) -> None:
        super().__init__(message, path=path, reason=reason)
        self.expires_at = expires_at

    def _extra(self) -> dict[str, object]:
        return {"reason": self.reason, "expires_at": self.expires_at}


class TokenNotYetValidError(TokenValidationError):
    """The token's ``nbf`` (or ``iat``) lies in the future by more than the allowed leeway."""

    reason = "not-yet-valid"


class AudienceMismatchError(TokenValidationError):
    """The token's ``aud`` claim does not contain any of the expected audiences."""

    reason = "audience-mismatch"


class IssuerMismatchError(TokenValidationError):
    """The token's ``iss`` claim is not the expected issuer."""

    reason = "issuer-mismatch"


class ExchangeError(TokenError):
    """A login or exchange of the projected token failed: Vault (`VaultLoginError`) or a
    cloud's token service (the `STSError`s, `EntraIDError`). One class, so one ``except``
    catches every exchange failure.

    ``transient`` is true when the server could not answer (unreachable, sealed, 5xx: trying
    again may work) and false when it refused (a configuration to fix). ``status`` is the HTTP
    status (``None`` without an answer), ``code`` the platform's own error code
    (``InvalidIdentityToken``, ``AADSTS700024``, ``invalid_grant``...), ``platform`` one of
    ``"vault"``, ``"aws"``, ``"alibabacloud"``, ``"azure"``, ``"google"`` (``""``: not said),
    ``server_message`` the server's own error text (through sa-token's formatter: no token).
    """

    reason = "exchange-failed"
    transient = False
    status: Optional[int] = None
    code: Optional[str] = None
    platform = ""
    server_message: Optional[str] = None

    def __init__(
        self,
        message: str,
        *,
        path: Optional[str] = None,
        reason: Optional[str] = None,
        transient: bool = False,
        status: Optional[int] = None,
        code: Optional[str] = None,
        platform: str = "",
        server_message: Optional[str] = None,
    ) -> None:
        super().__init__(message, path=path, reason=reason)
        self.transient, self.server_message = transient, server_message
        self._set(path, code, platform or type(self).platform, status)
        if reason is not None:
            self.reason = reason

    def _set(self, path: Optional[str], code: Optional[str], platform: str, status: Optional[int]) -> None:
        # For the subclasses whose SDK error runs __init__ first: fill in what it cannot pass.
        self.path, self.code, self.platform, self.status = path, code, platform, status
        self.reason = type(self).reason

    def _extra(self) -> dict[str, object]:
        return {
            "reason": self.reason,
            "transient": self.transient,
            "status": self.status,
            "code": self.code,
            "platform": self.platform,
            "server_message": self.server_message,
        }


class ConfigurationError(TokenError, ValueError):
    """A required setting is neither passed nor in the environment; the message names the
    variable. Also a ``ValueError``."""

    reason = "not-configured"


class ThreadStartError(TokenError, RuntimeError):
    """A thread sa-token needs (the watcher) cannot be started: the container's pids limit or
    the user's process limit (``ulimit -u``) is reached. Also a ``RuntimeError`` (what
    ``threading`` raises). Nothing is left registered; the next use tries again."""

    reason = "thread-unavailable"


def _rebuild(cls: type[TokenError], message: str, path: Optional[str], extra: dict[str, Any]) -> TokenError:
    return cls(message, path=path, **extra)

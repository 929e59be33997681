"""Observation points that `sa_token.metrics` reads at scrape time (nothing on the request path).

Integrations report here; the metrics collectors read here. Kept free of any metrics library:

* `count_auth_retry(client)`: a request was sent again after a 401 (or gRPC UNAUTHENTICATED)
  with a re-read token; ``client`` is the integration's name (``"requests"``, ``"httpx"``,
  ``"aiohttp"``, ``"grpc"``, ``"kubernetes"``, ...).
* `count_event(family, labels)`: something the receiving side (`sa_token.verify`) did: a
  verification by method and outcome, a JWKS fetch, a TokenReview, a cache hit; ``family`` is
  the metric's name, ``labels`` its label values in the family's order.
* `track_credential(obj)`: an exchanged credential (a Vault token, cloud credentials) to report
  the expiry of. ``obj`` follows [`ExchangedCredential`][sa_token._observe.ExchangedCredential];
  it is held weakly, so a dropped credential disappears from the metrics by itself.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from typing import Optional, Protocol, runtime_checkable

from ._hub import at_fork_in_child

__all__ = [
    "ExchangedCredential", "auth_retries", "count_auth_retry", "count_event", "credentials", "events",
    "track_credential",
]

_LOCK = threading.Lock()
_AUTH_RETRIES: Counter[str] = Counter()
_EVENTS: Counter[tuple[str, tuple[str, ...]]] = Counter()
_CREDENTIALS: weakref.WeakSet[ExchangedCredential] = weakref.WeakSet()


@runtime_checkable
class ExchangedCredential(Protocol):
    """What an exchange integration exposes for monitoring."""

    @property
    def credential_kind(self) -> str:
        """``"vault"``, ``"aws"``, ``"alibabacloud"``, ``"azure"`` or ``"google"``."""

    @property
    def credential_source_path(self) -> Optional[str]:
        """The projected token file the credential was exchanged from."""

    @property
    def credential_audience(self) -> Optional[str]:
        """The audience of that token."""

    def credential_expires_at(self) -> Optional[float]:
        """When the credential held now expires (POSIX seconds), ``None`` if none is held."""


def count_auth_retry(client: str) -> None:
    """Count one request sent again with a re-read token after an authentication failure."""
    with _LOCK:
        _AUTH_RETRIES[client] += 1


def auth_retries() -> dict[str, int]:
    """Retries so far, by client name."""
    with _LOCK:
        return dict(_AUTH_RETRIES)


def count_event(family: str, labels: tuple[str, ...]) -> None:
    """Count one event of metric ``family`` with these label values."""
    with _LOCK:
        _EVENTS[family, labels] += 1


def events(family: str) -> dict[tuple[str, ...], int]:
    """The counts of ``family`` so far, by label values."""
    with _LOCK:
        return {labels: n for (name, labels), n in _EVENTS.items() if name == family}


def track_credential(obj: ExchangedCredential) -> None:
    """Report ``obj``'s expiry in the metrics while it is alive."""
    with _LOCK:
        _CREDENTIALS.add(obj)


def credentials() -> list[ExchangedCredential]:
    """The live exchanged credentials."""
    with _LOCK:
        return list(_CREDENTIALS)


def _after_fork_in_child() -> None:  # the lock may have been held by a thread that is gone
    global _LOCK  # noqa: PLW0603
    _LOCK = threading.Lock()


at_fork_in_child(_after_fork_in_child)

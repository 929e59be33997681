"""What both exporters report, read from the live objects at scrape time: no I/O, never a token.

A series is one file (and, for tokens, the audience its sources require), never one object:
several objects on one key collapse into one series, the worst case where values differ.
Labels are shown as sa-token shows any text ([`sa_token._fmt`][sa_token._fmt]): control
characters escaped, paths bounded, anything that looks like a JWT replaced.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import NamedTuple, Optional

from sa_token import _fmt, _observe
from sa_token._ca import live_bundles
from sa_token._live import SourceReading, live_readings

log = logging.getLogger("sa_token")

__all__ = [
    "FAMILIES",
    "CASeries",
    "CredentialSeries",
    "Family",
    "TokenSeries",
    "auth_retries",
    "ca_series",
    "credential_series",
    "events",
    "token_series",
]


TOKEN_LABELS = ("path", "audience")


class Family(NamedTuple):
    """A metric both exporters report. ``name`` is the Prometheus name, a counter's without
    ``_total`` (exporters add it); ``unit`` is for OpenTelemetry."""

    name: str
    kind: str  # "gauge" or "counter"
    labels: tuple[str, ...]
    help: str
    unit: str = ""


EXPIRY = Family(
    "sa_token_expiry_timestamp_seconds",
    "gauge",
    TOKEN_LABELS,
    "When the token in the file expires (its exp claim), in Unix time; +Inf if it never does.",
    "s",
)
ROTATION_DUE = Family(
    "sa_token_rotation_due_timestamp_seconds",
    "gauge",
    TOKEN_LABELS,
    "When the kubelet should replace the token (80% of its lifetime), in Unix time.",
    "s",
)
LAST_RELOAD = Family(
    "sa_token_last_reload_timestamp_seconds",
    "gauge",
    TOKEN_LABELS,
    "When the token file was last read successfully, in Unix time.",
    "s",
)
RELOADS = Family(
    "sa_token_reloads",
    "counter",
    (*TOKEN_LABELS, "result"),
    "Reads of the token file (the first one included), by result: success or failure.",
    "{read}",
)
STALE = Family(
    "sa_token_stale",
    "gauge",
    TOKEN_LABELS,
    "1 when the token passed its rotation point and the kubelet has not replaced it.",
)
WATCH_INOTIFY = Family(
    "sa_token_watch_inotify",
    "gauge",
    TOKEN_LABELS,
    "1 when inotify watches the token file, 0 when only the fallback timer re-reads it.",
)
AUTH_RETRIES = Family(
    "sa_token_auth_retries",
    "counter",
    ("client",),
    "Requests sent again with a re-read token after a 401 (or gRPC UNAUTHENTICATED), by client.",
    "{request}",
)
CREDENTIAL_EXPIRY = Family(
    "sa_token_credential_expiry_timestamp_seconds",
    "gauge",
    ("kind", *TOKEN_LABELS),
    "When the credential exchanged from a token (Vault, cloud) expires, in Unix time.",
    "s",
)
CA_GENERATION = Family(
    "sa_token_ca_generation",
    "gauge",
    ("path",),
    "The CA bundle's generation: 1 when loaded, +1 for each new valid bundle.",
)
CA_LAST_CHANGE = Family(
    "sa_token_ca_last_change_timestamp_seconds",
    "gauge",
    ("path",),
    "When the current CA bundle was loaded, in Unix time.",
    "s",
)
# The receiving side (sa_token.verify): what verifiers did, counted as it happens (_observe).
VERIFICATIONS = Family(
    "sa_token_verifications",
    "counter",
    ("method", "result"),
    "Incoming tokens checked by sa_token.verify, by method and result (ok, or why not).",
    "{token}",
)
JWKS_FETCHES = Family(
    "sa_token_jwks_fetches",
    "counter",
    ("result",),
    "Fetches of the issuer's signing keys (JWKS) by sa_token.verify, by result.",
    "{request}",
)
TOKEN_REVIEWS = Family(
    "sa_token_token_reviews",
    "counter",
    ("result",),
    "TokenReviews sent by sa_token.verify, by result (authenticated, refused, error).",
    "{request}",
)
VERIFY_CACHE_HITS = Family(
    "sa_token_verify_cache_hits",
    "counter",
    ("method",),
    "Incoming tokens answered from sa_token.verify's cache of recent verdicts, by method.",
    "{token}",
)
EVENT_FAMILIES = (VERIFICATIONS, JWKS_FETCHES, TOKEN_REVIEWS, VERIFY_CACHE_HITS)
FAMILIES = (
    EXPIRY,
    ROTATION_DUE,
    LAST_RELOAD,
    RELOADS,
    STALE,
    WATCH_INOTIFY,
    AUTH_RETRIES,
    CREDENTIAL_EXPIRY,
    CA_GENERATION,
    CA_LAST_CHANGE,
    *EVENT_FAMILIES,
)


class TokenSeries(NamedTuple):
    """One token file, as read by the open sources that require one audience."""

    path: str
    audience: str  # the audiences the sources require, comma-separated; "" for any
    expiry: float  # the earliest exp (POSIX seconds); +inf for a token that never expires
    rotation_due: float  # the earliest rotation point; +inf without exp
    last_reload: float  # the oldest last successful read; nan if out of range
    stale: bool  # any source's token passed its rotation point unrotated
    inotify: bool  # the file is watched by inotify (one watch per file, shared)
    reads: int  # successful reads of the file, as the longest-lived source counted them
    failures: int  # failed reads, same source


class CASeries(NamedTuple):
    """One CA bundle file, as loaded by the open `CABundle` objects on it."""

    path: str
    generation: int  # the highest generation
    last_change: float  # the latest load of a new bundle (clock time)
    inotify: bool


class CredentialSeries(NamedTuple):
    """The credentials of one kind exchanged from one token file and audience."""

    kind: str
    path: str
    audience: str
    expiry: float  # the earliest expiry of those that hold a credential now


def token_series() -> list[TokenSeries]:
    groups: dict[tuple[str, Optional[tuple[str, ...]]], list[SourceReading]] = {}
    for r in live_readings():
        groups.setdefault((r.path, r.audiences), []).append(r)
    return [_token_series(rs) for rs in groups.values()]


def _token_series(rs: list[SourceReading]) -> TokenSeries:
    """Sources on one file and audience as one series: the earliest times, stale if any is; the
    counts of the source that counted most (each counts the reads since its creation)."""
    r = rs[0]
    if len(rs) > 1:
        counts = max(rs, key=lambda x: x.reads + x.failures)
        r = r._replace(
            expiry=min(x.expiry for x in rs),
            rotation_due=min(x.rotation_due for x in rs),
            last_read=min(x.last_read for x in rs),
            stale=any(x.stale for x in rs),
            inotify=any(x.inotify for x in rs),
            reads=counts.reads,
            failures=counts.failures,
        )
    return TokenSeries(
        *_shown(r.path, r.audiences),
        r.expiry,
        r.rotation_due,
        r.last_read if math.isfinite(r.last_read) else math.nan,
        r.stale,
        r.inotify,
        r.reads,
        r.failures,
    )


# Labels shown safely, for each file and audience seen: formatting them is most of a scrape's
# cost otherwise. Bounded: one entry per series (a process has tens of token files, not 4096).
@functools.lru_cache(maxsize=4096)
def _shown(path: str, audiences: Optional[tuple[str, ...]]) -> tuple[str, str]:
    return _fmt.path(path), _label(",".join(audiences or ()))


def ca_series() -> list[CASeries]:
    groups: dict[str, CASeries] = {}
    for bundle in live_bundles():
        new = CASeries(bundle.path, bundle.generation, bundle.changed_at, bundle.watching)
        old = groups.get(new.path)
        if old is not None:
            new = CASeries(
                new.path,
                max(old.generation, new.generation),
                max(old.last_change, new.last_change),
                old.inotify or new.inotify,
            )
        groups[new.path] = new
    return [CASeries(_fmt.path(s.path), s.generation, s.last_change, s.inotify) for s in groups.values()]


def credential_series() -> list[CredentialSeries]:
    groups: dict[tuple[str, str, str], float] = {}
    for cred in _observe.credentials():
        try:  # an integration's bug must not break the scrape: its credential is left out
            expires = cred.credential_expires_at()
            if expires is None:
                continue  # holds no credential now
            key = (
                _label(cred.credential_kind),
                _fmt.path(cred.credential_source_path or ""),
                _label(cred.credential_audience or ""),
            )
            expiry = float(expires)
        except Exception as exc:
            kind, error = type(cred).__name__, type(exc).__name__
            log.debug("sa-token: a %s could not report its expiry (%s)", kind, error)
            continue
        groups[key] = min(expiry, groups.get(key, math.inf))
    return [CredentialSeries(kind, path, aud, exp) for (kind, path, aud), exp in groups.items()]


def auth_retries() -> dict[str, int]:
    """Requests sent again after a 401, by client (labels shown safely)."""
    return {_label(client): n for client, n in _observe.auth_retries().items()}


def events(family: Family) -> list[tuple[dict[str, str], int]]:
    """A counter of `EVENT_FAMILIES`: (labels, count) for each label set seen."""
    counts = _observe.events(family.name)
    return [(dict(zip(family.labels, map(_label, values))), n) for values, n in counts.items()]


def _label(value: str) -> str:
    return _fmt.redact(_fmt.text(value))

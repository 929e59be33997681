"""What a [`LeaseKeeper`][sa_token._lease.LeaseKeeper] says and counts: its log lines, collected
while its work lock is held and said after it is released (`Notes`), each failure warned once
until it recovers, and how many logins and renewals it made. Nothing here decides anything."""

from __future__ import annotations

import math
from typing import Any, Optional

from . import _fmt, _log
from ._lease_plan import Grant, Lease, Plan
from ._locks import Notes
from ._token import Token

__all__ = ["Report", "describe"]


class Report:
    """A keeper's voice and counters (``logins`` and ``renewals``: this process's, for tests
    and metrics). Written only under the keeper's work lock, except `thread_failed` (the hub's
    thread)."""

    __slots__ = ("logins", "name", "notes", "renewals", "warned")

    def __init__(self, name: str) -> None:
        self.name = name
        self.notes = Notes()  # what to log once the work lock is released
        self.warned: Optional[str] = None  # the last failure logged, so each is logged once
        self.logins = 0
        self.renewals = 0

    def warn(self, plan: Plan[Any], now: float, what: str, *, key: str, level: int = _log.WARNING) -> None:
        """``what`` went wrong (once per ``key`` until `recovered`), and what the keeper does."""
        if self.warned == key:
            return
        self.warned = key
        lease = plan.lease
        if lease is not None and lease.valid(now):
            keep = f"keeping the current credential (valid for {_fmt.duration(lease.expires_at - now)})"
        else:
            keep = "no valid credential until this succeeds"
        retry = (
            f"; retrying in {_fmt.duration(plan.retry_at - now)}"
            if plan.failures and math.isfinite(plan.retry_at)
            else ""
        )
        self.notes.add(level, "sa-token: %s: %s; %s%s", self.name, what, keep, retry)

    def recovered(self) -> None:
        if self.warned is not None:
            self.notes.add(_log.INFO, "sa-token: %s: recovered", self.name)
            self.warned = None

    def logged_in(self, tok: Token, grant: Grant[Any], lease: Lease[Any], now: float) -> None:
        self.logins += 1
        self.recovered()
        self.notes.add(
            _log.INFO,
            "sa-token: %s: logged in with the projected token %s (%s, valid for %s%s)",
            self.name,
            describe(tok),
            grant.credential,
            _fmt.duration(lease.expires_at - now),
            ", renewable" if grant.renewable else ", not renewable",
        )

    def renewed(self, lease: Lease[Any], now: float) -> None:
        self.renewals += 1
        self.recovered()
        self.notes.add(
            _log.DEBUG,
            "sa-token: %s: renewed, valid for %s%s",
            self.name,
            _fmt.duration(lease.expires_at - now),
            " (capped by the maximum TTL: logging in again before it ends)" if lease.capped else "",
        )

    def renewal_refused(self, why: object) -> None:
        self.notes.add(_log.INFO, "sa-token: %s: renewal refused (%s); logging in again", self.name, why)

    def thread_failed(self, exc: BaseException) -> None:
        """The worker thread for a due action could not start (said at once: no lock is held)."""
        if self.warned != "thread":
            self.warned = "thread"
            _log.log.warning("sa-token: %s: cannot start the renewal thread (%s); retrying with backoff",
                             self.name, _fmt.text(exc))

    def forked(self) -> None:
        """In a forked child: nothing said or counted yet."""
        self.notes = Notes()
        self.logins = self.renewals = 0


def describe(tok: Token) -> str:
    """A projected token for a log line: its jti and expiry, never its value."""
    jti = tok.claims.get("jti")
    exp = tok.expires_at
    return f"(jti {_fmt.text(jti) if jti else 'none'}, expires {_fmt.iso(exp) if exp else 'never'})"

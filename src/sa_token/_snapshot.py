"""What readers of a token file share: `Snapshot` (one immutable object, replaced whole) and the
public `TokenStatus` built from it. No I/O, no locks: plain values."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from ._token import Token
from ._validity import stale_for, time_error
from .errors import TokenError

__all__ = ["Snapshot", "TokenStatus", "status_of"]


class Snapshot:
    """What the sources of one file with one set of settings share (`sa_token._tokenfile.FileView`).
    Replaced whole, under the file's lock; never changed (`_replace` makes a new one). Not a tuple:
    error reporters that walk the containers in a frame's locals must not find the token in it
    (`tests/test_no_token_in_frames.py`)."""

    __slots__ = (
        "error", "failures", "generation", "read_at", "reads", "refresh_at", "serve_from", "serve_until",
        "token", "value",
    )
    token: Token
    value: str  # token.value, one attribute read closer for token(); never in the repr
    read_at: float  # when ``token`` was read (clock time)
    refresh_at: float  # when to read the file again
    serve_from: float  # nbf/iat less the leeway
    serve_until: float  # min(refresh_at + REQUEST_GRACE, exp); -inf once invalidated or closed
    error: Optional[TokenError]  # the last read's error; None when it succeeded
    generation: int  # the file read this snapshot reflects (single flight)
    reads: int  # successful reads so far
    failures: int  # failed reads so far

    def __init__(self, **fields: Any) -> None:
        for name in self.__slots__:
            setattr(self, name, fields[name])

    def _replace(self, **changes: Any) -> Snapshot:
        new = object.__new__(Snapshot)
        for name in self.__slots__:
            setattr(new, name, changes[name] if name in changes else getattr(self, name))
        return new

    def __repr__(self) -> str:
        return f"Snapshot({self.token!r}, read_at={self.read_at}, generation={self.generation})"


class TokenStatus:
    """A source's state, as `TokenSource.status` reports it (no I/O, no token)."""

    path: str
    """The token file."""
    audiences: Optional[tuple[str, ...]]
    """The audiences the source requires (``None``: any)."""
    valid: bool
    """Whether the current token may be used now (unexpired, already valid, source open)."""
    reason: Optional[str]
    """Why not: ``"expired"``, ``"not-yet-valid"`` or ``"closed"``; ``None`` when valid."""
    expires_at: Optional[datetime]
    """The current token's ``exp``."""
    rotation_due_at: Optional[datetime]
    """When the kubelet should replace it (80% of its lifetime)."""
    stale: bool
    """The rotation point passed (with the kubelet's margin) and the file still holds this token."""
    last_read_at: Optional[datetime]
    """When the current token was last read successfully."""
    last_error: Optional[str]
    """The last read's error message (never the token), ``None`` when the last read succeeded."""
    watching: str
    """``"inotify"``, ``"timer"`` (inotify unavailable or off) or ``"closed"``."""
    reads: int
    """Successful reads of the file for this source's settings (sources on one file with the
    same settings share their reads)."""
    failures: int
    """Failed reads."""

    # A plain class, not a dataclass (`dataclasses` imports `inspect`, a sixth of `import
    # sa_token`): keyword construction, frozen, equal by its fields, a dataclass-like repr.
    _FIELDS = (
        "path", "audiences", "valid", "reason", "expires_at", "rotation_due_at", "stale",
        "last_read_at", "last_error", "watching", "reads", "failures",
    )

    def __init__(self, **fields: Any) -> None:
        missing = set(self._FIELDS) - set(fields)
        extra = set(fields) - set(self._FIELDS)
        if missing or extra:
            raise TypeError(f"TokenStatus() needs exactly {self._FIELDS}: missing {sorted(missing)}, "
                            f"unexpected {sorted(extra)}")
        for name in self._FIELDS:
            object.__setattr__(self, name, fields[name])

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: a TokenStatus is immutable")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._FIELDS)

    def __eq__(self, other: object) -> bool:
        if type(other) is not TokenStatus:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return f"TokenStatus({', '.join(f'{n}={getattr(self, n)!r}' for n in self._FIELDS)})"


def status_of(
    snap: Snapshot, now: float, *, path: str, audiences: Optional[tuple[str, ...]], leeway: float,
    watching: str,
) -> TokenStatus:
    """A source's `TokenStatus` from its snapshot (``watching`` is ``"closed"`` once closed)."""
    tok = snap.token
    problem: Optional[str] = "closed" if watching == "closed" else None
    if problem is None:
        err = time_error(tok, now, leeway, path)
        problem = None if err is None else err.reason
    return TokenStatus(
        path=path,
        audiences=audiences,
        valid=problem is None,
        reason=problem,
        expires_at=tok.expires_at,
        rotation_due_at=tok.rotation_due_at,
        stale=stale_for(tok, now) is not None,
        last_read_at=_utc(snap.read_at),
        last_error=None if snap.error is None else str(snap.error),
        watching=watching,
        reads=snap.reads,
        failures=snap.failures,
    )


def _utc(ts: float) -> Optional[datetime]:
    try:
        return datetime.fromtimestamp(ts, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None

"""kopf integration: a login handler that gives the operator the pod's current projected token.

```python
import kopf
import sa_token.kopf

kopf.on.login()(sa_token.kopf.login)        # the kube-api-access volume
# or, for a token in a projected volume of its own:
kopf.on.login()(sa_token.kopf.login_handler(source=TokenSource("/var/run/secrets/tokens/api")))
```

kopf's own in-cluster login reads the token once per login and sets no ``expiration``, so kopf
logs in again only after a 401; and its credentials vault refuses credentials equal to ones that
were just rejected, so a 401 while the file still holds the same token ends the operator with
"Ran out of valid credentials" (nolar/kopf#926). This handler:

* returns a ``kopf.ConnectionInfo`` with the current token (re-read at every login), the CA
  bundle's PEM, the namespace file next to the token, and ``expiration`` at the token's rotation
  point, so kopf logs in again (and reconnects its watches) when the kubelet has written the
  next token, before the old one goes stale. If the kubelet is late, the next login is
  [`RECHECK`][sa_token.kopf.RECHECK] seconds later;
* never returns a ``ConnectionInfo`` equal to one it returned before (their ``expiration``
  differs by at least a microsecond), so kopf never refuses it;
* after a rejection with no newer token in the file, waits for the kubelet's next write (or a
  backoff of 1, 2, 4 ... up to [`MAX_BACKOFF`][sa_token.kopf.MAX_BACKOFF] seconds) before it
  hands the token out again, logging a warning: the operator pauses instead of ending or
  spinning.

File reads run in a worker thread, never on kopf's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import threading
from collections.abc import Awaitable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Optional, Union

try:
    import kopf
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("sa_token.kopf needs the kopf package: pip install 'sa-token[kopf]'") from exc

from . import _clock
from ._ca import CABundle
from ._flow import REJECTED_MAX, Rejections, next_token
from ._incluster import DEFAULT_CA_PATH, DEFAULT_TOKEN_PATH, NAMESPACE_NEXT_TO_TOKEN, InCluster, resolve
from ._source import TokenSource, require_source
from ._token import Token
from .errors import TokenError

__all__ = [
    "MAX_BACKOFF", "PRIORITY", "RECHECK", "LoginHandler", "NotInClusterError", "login", "login_handler",
]

LoginFn = Callable[..., Awaitable["kopf.ConnectionInfo"]]

log = logging.getLogger("sa_token")

# Above kopf's own logins (10-20), so this handler's credentials are preferred if both exist.
PRIORITY = 30
# When the token is past its rotation point at login (the kubelet is late), log in again this
# soon: often enough to pick up the late token well before it expires (kubelet tokens have at
# least 20% of their lifetime, >= 2 minutes, left at that point), rarely enough to cost nothing.
RECHECK = 30.0
# Backoff after a rejection with no newer token: the shared one (`sa_token._flow.Rejections`),
# 1 s doubling to this cap.
MAX_BACKOFF = REJECTED_MAX


class NotInClusterError(TokenError, kopf.LoginError):
    """Not running in a pod (the service environment variables or the ServiceAccount files are
    missing). Also a ``kopf.LoginError``."""


class LoginHandler:
    """The state of one login handler over one [`TokenSource`][sa_token.TokenSource] and
    [`CABundle`][sa_token.CABundle]; see the module documentation. Made by
    [`login_handler`][sa_token.kopf.login_handler], which wraps it in a plain ``async def`` (kopf
    names and awaits functions, not callable objects)."""

    def __init__(
        self,
        *,
        source: Optional[TokenSource],
        ca: Optional[CABundle],
        token_path: Union[str, os.PathLike[str]],
        ca_path: Union[str, os.PathLike[str]],
        namespace_path: Union[str, os.PathLike[str], None],
        environ: Optional[Mapping[str, str]],
    ) -> None:
        self._args = (environ, token_path, ca_path, namespace_path, source, ca)
        self._found: Optional[InCluster] = None
        self._last: Optional[Token] = None  # the token of the last login, and until when kopf uses it
        self._last_until = 0.0
        self._rejections = Rejections()
        self._serial = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        source = self._found.source if self._found is not None else self._args[4]
        return f"sa_token.kopf.LoginHandler({source!r})"

    async def login(self, **kwargs: Any) -> kopf.ConnectionInfo:  # noqa: ARG002 - kopf's logger, memo...
        started = _clock.wall()  # wall-clock time, as kopf's expiration is
        found, tok, pem = await asyncio.to_thread(self._read)
        # kopf logs in before the last credentials expired: they were rejected (a 401), and the
        # file has nothing newer. Wait for the kubelet (or the backoff), then go on.
        last = self._last
        rejected = last is not None and tok.value == last.value and started < self._last_until
        delay = self._rejections.delay(rejected)
        if delay:
            log.warning(
                "sa-token: the API server rejected the token from %s and the file has no newer one; "
                "waiting up to %.0fs for the kubelet's next token", found.source.path, delay,
            )
            await next_token(found.source, delay)
            found, tok, pem = await asyncio.to_thread(self._read)
        expiration = self._expiration(tok, found.source)
        self._last, self._last_until = tok, expiration.timestamp()
        return kopf.ConnectionInfo(
            server=found.host,
            ca_data=pem,
            scheme="Bearer",
            token=tok.value,
            default_namespace=found.namespace,
            expiration=expiration,
            priority=PRIORITY,
        )

    def _read(self) -> tuple[InCluster, Token, str]:
        """In a worker thread: find the cluster (once), re-read the token, the CA bundle."""
        with self._lock:
            if self._found is None:
                self._found = resolve(*self._args, NotInClusterError)
        found = self._found
        if self._last is not None:  # a login may follow a 401 of the last one: look at the file
            found.source.invalidate_if(self._last)
        # base64 of the PEM, like a kubeconfig's certificate-authority-data: every kopf version
        # takes it (kopf < 1.39 only that, later ones also the PEM itself).
        return found, found.source.current(), base64.b64encode(found.ca.pem).decode("ascii")

    def _expiration(self, tok: Token, source: TokenSource) -> datetime:
        now = _clock.wall()
        due = tok.rotation_due_at
        until = due.timestamp() if due is not None else now + source.refresh_interval
        if until <= now:  # the kubelet is late: look again soon, within the token's life
            exp = tok.expires_at
            until = min(now + RECHECK, exp.timestamp() if exp is not None else now + RECHECK)
        self._serial = (self._serial + 1) % 1_000_000
        # Unique per login: kopf refuses credentials equal to ones it has seen rejected.
        return datetime.fromtimestamp(until, timezone.utc) - timedelta(microseconds=self._serial)


def login_handler(
    *,
    source: Optional[TokenSource] = None,
    ca: Optional[CABundle] = None,
    token_path: Union[str, os.PathLike[str]] = DEFAULT_TOKEN_PATH,
    ca_path: Union[str, os.PathLike[str]] = DEFAULT_CA_PATH,
    namespace_path: Union[str, os.PathLike[str], None] = NAMESPACE_NEXT_TO_TOKEN,
    environ: Optional[Mapping[str, str]] = None,
) -> LoginFn:
    """A login handler for ``kopf.on.login()``.

    Args:
        source: the token (default: a [`TokenSource`][sa_token.TokenSource] on ``token_path``).
        ca: the API server's CA (default: a [`CABundle`][sa_token.CABundle] on ``ca_path``).
        token_path: the token file, when no ``source`` is given.
        ca_path: the CA file, when no ``ca`` is given.
        namespace_path: the namespace file (its content becomes kopf's default namespace for
            events); default: next to the token, else the kube-api-access volume's.
        environ: where ``KUBERNETES_SERVICE_HOST``/``_PORT`` are (``os.environ``).

    The files are first read at the first login (in a worker thread); outside a pod that login
    raises [`NotInClusterError`][sa_token.kopf.NotInClusterError].
    """
    require_source(source, "sa_token.kopf.login_handler(source=...)")
    state = LoginHandler(source=source, ca=ca, token_path=token_path, ca_path=ca_path,
                         namespace_path=namespace_path, environ=environ)

    async def sa_token_login(**kwargs: Any) -> kopf.ConnectionInfo:
        return await state.login(**kwargs)

    sa_token_login.handler = state  # type: ignore[attr-defined]
    return sa_token_login


_default: Optional[LoginFn] = None


async def login(**kwargs: Any) -> kopf.ConnectionInfo:
    """The login handler for the kube-api-access volume: ``kopf.on.login()(sa_token.kopf.login)``."""
    global _default  # noqa: PLW0603 - one handler (one source) per process, made on first use
    if _default is None:
        _default = login_handler()
    return await _default(**kwargs)

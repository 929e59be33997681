"""requests integration: ``auth=TokenAuth(source)`` sends the current projected token.

```python
from sa_token import TokenSource
from sa_token.requests import TokenAuth

session = requests.Session()
session.auth = TokenAuth(TokenSource("/var/run/secrets/tokens/vault"), hosts=["vault.vault.svc:8200"])
session.get("https://vault.vault.svc:8200/v1/sys/health")
```

Header, ``hosts`` and 401 rules: `sa_token._flow` (this module only drives it).
[`CAReloadingAdapter`][sa_token.requests.CAReloadingAdapter] follows a ``ca.crt`` that the
kubelet rotates.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Optional, Union

try:
    from requests.auth import AuthBase
    from requests.cookies import extract_cookies_to_jar
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "sa_token.requests needs the requests package: pip install 'sa-token[requests]'"
    ) from exc

from ._flow import AUTHORIZATION, UNAUTHORIZED, Attempt, BearerFlow, Reply, bearer
from ._requests_ca import CAReloadingAdapter

if TYPE_CHECKING:
    from requests import PreparedRequest, Response

    from ._source import TokenSource

__all__ = ["CAReloadingAdapter", "TokenAuth"]


class TokenAuth(AuthBase):
    """Attach ``Authorization: Bearer <token>`` from a [`TokenSource`][sa_token.TokenSource].

    * A request that already has an ``Authorization`` header is sent unchanged.
    * ``hosts``: only requests to these hosts get the token (``"host"`` matches the scheme's
      default port only, ``"host:port"`` that port); default: every request.
    * After a 401 the token is re-read; if it changed, the request is sent once more (bytes,
      str and seekable file bodies are replayed; a generator or other one-shot body is not,
      and the 401 is returned). The first response is in ``response.history``.

    One instance can be shared by any number of threads and sessions: each request's attempt
    lives in its own response hook.
    """

    def __init__(self, source: TokenSource, *, hosts: Union[str, Iterable[str], None] = None) -> None:
        self.flow = BearerFlow(source, hosts=hosts, client="requests", what="sa_token.requests.TokenAuth()")

    @property
    def source(self) -> TokenSource:
        return self.flow.source

    def __repr__(self) -> str:
        return f"sa_token.requests.TokenAuth({self.flow!r})"

    def __call__(self, r: PreparedRequest) -> PreparedRequest:
        attempt = self.flow.attempt(
            r.url or "", has_authorization=AUTHORIZATION in r.headers, replayable=_Rewind(r.body)
        )
        if attempt is None:
            return r
        held = attempt.step()
        assert held is not None  # the first step always reads a token (or raises)
        r.headers[AUTHORIZATION] = bearer(held)
        r.hooks["response"].append(_RetryOn401(attempt))
        return r


class _RetryOn401:
    """The response hook of one request. requests calls it for every hop of a redirect chain
    (``PreparedRequest.copy()`` carries it along); the attempt hears only the final answer,
    and judges whether that request still carried our token (requests drops the header on a
    redirect to another host)."""

    def __init__(self, attempt: Attempt) -> None:
        self.attempt = attempt

    def __repr__(self) -> str:
        return "<sa_token.requests 401 hook>"

    def __call__(self, r: Response, **kwargs: Any) -> Response:
        if r.is_redirect or r.status_code != UNAUTHORIZED:
            return r  # the answer stands: nothing for the flow to do
        prep = r.request
        held = self.attempt.step(Reply(prep.url, prep.headers.get(AUTHORIZATION)))
        if held is None:
            return r
        # As HTTPDigestAuth.handle_401: release the connection, copy, resend on the same adapter.
        r.content  # noqa: B018 - drain, so the connection can be reused
        r.close()
        retry = prep.copy()
        jar = retry._cookies  # type: ignore[attr-defined]
        extract_cookies_to_jar(jar, prep, r.raw)  # type: ignore[no-untyped-call]
        retry.prepare_cookies(jar)
        retry.headers[AUTHORIZATION] = bearer(held)
        resent: Response = r.connection.send(retry, **kwargs)
        resent.history.append(r)
        resent.request = retry
        return resent


class _Rewind:
    """Rewinds the body for a retry: bytes, str and no body replay as they are; a seekable
    file goes back to where it started; anything else can be read only once."""

    def __init__(self, body: object) -> None:
        self.body = body
        self.pos = _position(body)

    def __call__(self) -> bool:
        if self.body is None or isinstance(self.body, (bytes, str)):
            return True
        if self.pos is None:
            return False
        try:
            self.body.seek(self.pos)  # type: ignore[attr-defined]
        except (OSError, ValueError):
            return False
        return True


def _position(body: object) -> Optional[int]:
    seekable = getattr(body, "seekable", None)
    tell = getattr(body, "tell", None)
    if tell is None or getattr(body, "seek", None) is None:
        return None
    try:
        if seekable is not None and not seekable():
            return None
        pos = tell()
    except (OSError, ValueError):
        return None
    return pos if isinstance(pos, int) else None

"""httpx integration: ``auth=TokenAuth(source)`` for ``httpx.Client`` and ``httpx.AsyncClient``.

```python
from sa_token import TokenSource
from sa_token.httpx import TokenAuth

auth = TokenAuth(TokenSource("/var/run/secrets/tokens/vault"), hosts=["vault.vault.svc:8200"])
httpx.get("https://vault.vault.svc:8200/v1/sys/health", auth=auth)
async with httpx.AsyncClient(auth=auth) as client:
    await client.get("https://vault.vault.svc:8200/v1/sys/health")
```

Header, ``hosts`` and 401 rules: `sa_token._flow` (both flows below only drive it).
[`CAReloadingTransport`][sa_token.httpx.CAReloadingTransport] and
[`AsyncCAReloadingTransport`][sa_token.httpx.AsyncCAReloadingTransport] follow a ``ca.crt``
that the kubelet rotates.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Callable, Generic, Optional, TypeVar, Union

try:
    import httpx
    from anyio import to_thread  # an httpx dependency
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("sa_token.httpx needs the httpx package: pip install 'sa-token[httpx]'") from exc

from ._flow import AUTHORIZATION, UNAUTHORIZED, Attempt, BearerFlow, Reply, bearer

if TYPE_CHECKING:
    import ssl

    from ._ca import CABundle
    from ._source import TokenSource

__all__ = ["AsyncCAReloadingTransport", "CAReloadingTransport", "TokenAuth"]


class TokenAuth(httpx.Auth):
    """Attach ``Authorization: Bearer <token>`` from a [`TokenSource`][sa_token.TokenSource].

    * A request that already has an ``Authorization`` header (also from the client's default
      headers) is sent unchanged.
    * ``hosts``: only requests to these hosts get the token (``"host"`` matches the scheme's
      default port only, ``"host:port"`` that port); default: every request.
    * After a 401 the token is re-read; if it changed, the request is sent once more. Only a
      body held in memory (``content=`` bytes or str, ``data=``, ``json=``, none) is replayed;
      after a streaming body (an iterator, a file, a multipart upload with files) the 401 is
      returned. The first response is in ``response.history``.

    The async flow never blocks the event loop: when the token must be read from the file, the
    read runs in a worker thread (``anyio.to_thread``, so asyncio and trio both work). Safe to
    share between threads, clients and tasks: all per-request state lives in the flow.
    """

    def __init__(self, source: TokenSource, *, hosts: Union[str, Iterable[str], None] = None) -> None:
        self.flow = BearerFlow(source, hosts=hosts, client="httpx", what="sa_token.httpx.TokenAuth()")

    @property
    def source(self) -> TokenSource:
        return self.flow.source

    def __repr__(self) -> str:
        return f"sa_token.httpx.TokenAuth({self.flow!r})"

    def _attempt(self, request: httpx.Request) -> Optional[Attempt]:
        return self.flow.attempt(
            None if self.flow.hosts is None else str(request.url),  # None: every host is allowed
            has_authorization=AUTHORIZATION in request.headers,
            replayable=lambda: _replayable(request),
        )

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        attempt = self._attempt(request)
        held = attempt.step() if attempt is not None else None
        if attempt is None or held is None:
            yield request
            return
        while held is not None:
            request.headers[AUTHORIZATION] = bearer(held)
            response = yield request
            if response.status_code != UNAUTHORIZED:
                return  # the answer stands: nothing for the flow to do
            held = attempt.step(_reply(response))

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        attempt = self._attempt(request)
        held = await attempt.astep(to_thread=to_thread.run_sync) if attempt is not None else None
        if attempt is None or held is None:
            yield request
            return
        while held is not None:
            request.headers[AUTHORIZATION] = bearer(held)
            response = yield request
            if response.status_code != UNAUTHORIZED:
                return
            held = await attempt.astep(_reply(response), to_thread=to_thread.run_sync)


def _reply(response: httpx.Response) -> Reply:
    last = response.request  # after redirects, the redirected request
    return Reply(str(last.url), last.headers.get(AUTHORIZATION))


def _replayable(request: httpx.Request) -> bool:
    """Whether the body is in memory, so sending the request again sends the same bytes."""
    try:
        request.content  # noqa: B018 - raises RequestNotRead for a streaming body
    except httpx.RequestNotRead:
        return False
    return True


# --------------------------------------------------------------------------- CA rotation ------
Inner = TypeVar("Inner")  # httpx.HTTPTransport or httpx.AsyncHTTPTransport


class _Generation(Generic[Inner]):
    """One inner transport, built for one CA context, and the responses still using it."""

    def __init__(self, ctx: ssl.SSLContext, transport: Inner) -> None:
        self.ctx = ctx
        self.transport = transport
        self.active = 0
        self.retired = False


class _CAFollower(Generic[Inner]):
    """Keeps the inner transport in step with the bundle: a new ``SSLContext`` gets a new inner
    transport; the old one is closed once the responses it is still streaming are closed."""

    def __init__(
        self, ca: CABundle, factory: Callable[[ssl.SSLContext], Inner], kwargs: dict[str, Any]
    ) -> None:
        for name in ("verify", "cert"):
            if name in kwargs:
                raise TypeError(
                    f"{type(self).__name__} verifies servers with its CA bundle: {name}= is not "
                    "supported (it would change the bundle's shared SSLContext)"
                )
        self.ca = ca
        self._factory = factory
        self._lock = threading.Lock()
        ctx = ca.ssl_context()
        self._current = _Generation(ctx, factory(ctx))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.ca!r})"

    def _acquire(self) -> tuple[_Generation[Inner], Optional[Inner]]:
        """The generation to send on (counted as active), and a retired transport to close."""
        ctx = self.ca.ssl_context()  # the same object until the bundle changes
        to_close = None
        with self._lock:
            gen = self._current
            if ctx is not gen.ctx:
                gen.retired = True
                if gen.active == 0:
                    to_close = gen.transport
                gen = self._current = _Generation(ctx, self._factory(ctx))
            gen.active += 1
        return gen, to_close

    def _release(self, gen: _Generation[Inner]) -> Optional[Inner]:
        """A response is done; returns the transport to close if it was the last one on a
        retired generation."""
        with self._lock:
            gen.active -= 1
            return gen.transport if gen.retired and gen.active == 0 else None

    def _close_all(self) -> list[Inner]:
        with self._lock:
            gen = self._current
            gen.retired = True
            return [gen.transport]


class CAReloadingTransport(_CAFollower[httpx.HTTPTransport], httpx.BaseTransport):
    """An ``httpx.HTTPTransport`` that verifies servers against a [`CABundle`][sa_token.CABundle]
    and follows its rotations: when the bundle changes, the next request builds a new
    ``HTTPTransport(verify=<new context>)``; the old one is closed when its last response is.

    ```python
    ca = CABundle("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
    client = httpx.Client(transport=CAReloadingTransport(ca), auth=TokenAuth(source))
    ```

    Keyword arguments go to ``httpx.HTTPTransport`` (``verify=`` and ``cert=`` are refused:
    they would change the bundle's shared context). A client's environment proxies
    (``HTTPS_PROXY``) are mounted beside, not through, this transport: pass ``proxy=`` here, or
    ``trust_env=False`` to the client.
    """

    def __init__(self, ca: CABundle, **kwargs: Any) -> None:
        super().__init__(ca, lambda ctx: httpx.HTTPTransport(verify=ctx, **kwargs), kwargs)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        gen, old = self._acquire()
        if old is not None:
            old.close()
        try:
            response = gen.transport.handle_request(request)
        except BaseException:
            self._close(self._release(gen))
            raise
        stream = response.stream
        assert isinstance(stream, httpx.SyncByteStream)
        response.stream = _SyncStream(stream, lambda: self._close(self._release(gen)))
        return response

    def close(self) -> None:
        for transport in self._close_all():
            transport.close()

    @staticmethod
    def _close(transport: Optional[httpx.HTTPTransport]) -> None:
        if transport is not None:
            transport.close()


class AsyncCAReloadingTransport(_CAFollower[httpx.AsyncHTTPTransport], httpx.AsyncBaseTransport):
    """[`CAReloadingTransport`][sa_token.httpx.CAReloadingTransport] for ``httpx.AsyncClient``
    (an ``AsyncHTTPTransport`` inside).

    The bundle is checked with a ``stat`` at most every ``CABundle.check_interval`` (inotify
    reports rotations in between), so the event loop is not held up by file I/O in practice.
    """

    def __init__(self, ca: CABundle, **kwargs: Any) -> None:
        super().__init__(ca, lambda ctx: httpx.AsyncHTTPTransport(verify=ctx, **kwargs), kwargs)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        gen, old = self._acquire()
        if old is not None:
            await old.aclose()
        try:
            response = await gen.transport.handle_async_request(request)
        except BaseException:
            await self._aclose(self._release(gen))
            raise
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        response.stream = _AsyncStream(stream, lambda: self._aclose(self._release(gen)))
        return response

    async def aclose(self) -> None:
        for transport in self._close_all():
            await transport.aclose()

    @staticmethod
    async def _aclose(transport: Optional[httpx.AsyncHTTPTransport]) -> None:
        if transport is not None:
            await transport.aclose()


class _SyncStream(httpx.SyncByteStream):
    def __init__(self, stream: httpx.SyncByteStream, on_close: Callable[[], None]) -> None:
        self._stream = stream
        self._on_close: Optional[Callable[[], None]] = on_close

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()


class _AsyncStream(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, on_close: Callable[[], Any]) -> None:
        self._stream = stream
        self._on_close: Optional[Callable[[], Any]] = on_close

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                await on_close()

"""httpx transports that follow a rotating ``ca.crt``: re-exported by `sa_token.httpx` (which
checks that httpx is installed first), as [`CAReloadingTransport`][sa_token.httpx.CAReloadingTransport]
and [`AsyncCAReloadingTransport`][sa_token.httpx.AsyncCAReloadingTransport]."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, Callable, Optional

import httpx

from ._ca import CABundle
from ._generations import CAFollower as _CAFollower

__all__ = ["AsyncCAReloadingTransport", "CAReloadingTransport"]


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

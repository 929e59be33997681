"""A client resource (an HTTP transport, a connection pool) built for one CA bundle's
``SSLContext``: when the bundle changes, the next request gets a new one, and the old one is
closed once the last response still using it is done. No I/O, no library imported."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Generic, Optional, TypeVar

if TYPE_CHECKING:
    import ssl

    from ._ca import CABundle

__all__ = ["CAFollower"]


Inner = TypeVar("Inner")  # httpx.HTTPTransport or httpx.AsyncHTTPTransport


class _Generation(Generic[Inner]):
    """One inner transport, built for one CA context, and the responses still using it."""

    def __init__(self, ctx: ssl.SSLContext, transport: Inner) -> None:
        self.ctx = ctx
        self.transport = transport
        self.active = 0
        self.retired = False


class CAFollower(Generic[Inner]):
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

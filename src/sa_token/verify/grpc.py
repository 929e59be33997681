"""gRPC servers (``grpcio``, sync and ``grpc.aio``): interceptors that check every call's token.

```python
import grpc
from sa_token.verify import TokenVerifier
from sa_token.verify.grpc import server_interceptor, aio_server_interceptor, current_identity

verifier = TokenVerifier(audience="payments")
server = grpc.server(executor, interceptors=[server_interceptor(verifier)])
server = grpc.aio.server(interceptors=[aio_server_interceptor(verifier)])

def Pay(self, request, context):
    identity = current_identity()          # the caller's Identity, inside the handler
```

The ``authorization`` metadata (``Bearer <token>``) is checked before the handler runs; a call
without a usable token ends with ``UNAUTHENTICATED``, one the verifier cannot decide with
``UNAVAILABLE`` (clients retry that one). Methods in ``exempt`` (full names, the health
service by default) pass unchecked. Every kind of RPC (unary and streaming) is covered.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Iterator
from typing import Any, Callable, Optional, Union

try:
    import grpc
    from grpc import aio as grpc_aio
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("sa_token.verify.grpc needs the grpcio package: pip install 'sa-token[grpc]'") from exc

from ._identity import Identity
from ._serving import Refusal, adecide, decide
from ._verifier import TokenVerifier

__all__ = ["aio_server_interceptor", "current_identity", "server_interceptor"]

HEALTH = ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch")
_IDENTITY: contextvars.ContextVar[Optional[Identity]] = contextvars.ContextVar(
    "sa_token_identity", default=None
)
_KINDS = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def current_identity() -> Optional[Identity]:
    """The `Identity` of the call being handled (None outside a checked call)."""
    return _IDENTITY.get()


def _header(context: Any) -> Optional[str]:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return str(value)
    return None


def _code(refused: Refusal) -> grpc.StatusCode:
    return grpc.StatusCode.UNAVAILABLE if refused.status == 503 else grpc.StatusCode.UNAUTHENTICATED


def _rewrap(handler: Any, wrap: Callable[[Callable[..., Any], bool], Callable[..., Any]]) -> Any:
    attr, make = _KINDS[bool(handler.request_streaming), bool(handler.response_streaming)]
    return make(
        wrap(getattr(handler, attr), bool(handler.response_streaming)),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class _Interceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, verifier: TokenVerifier, exempt: frozenset[str]) -> None:
        self.verifier, self.exempt = verifier, exempt

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or details.method in self.exempt:
            return handler
        return _rewrap(handler, self._wrap)

    def _admit(self, context: Any) -> Identity:
        outcome = decide(self.verifier, _header(context))
        if isinstance(outcome, Identity):
            return outcome
        context.abort(_code(outcome), outcome.message)
        raise AssertionError("context.abort returns only by raising")  # pragma: no cover

    def _wrap(self, behavior: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
        def unary(request: Any, context: Any) -> Any:
            reset = _IDENTITY.set(self._admit(context))
            try:
                return behavior(request, context)
            finally:
                _IDENTITY.reset(reset)

        def stream(request: Any, context: Any) -> Iterator[Any]:
            reset = _IDENTITY.set(self._admit(context))
            try:
                yield from behavior(request, context)
            finally:
                _IDENTITY.reset(reset)

        return stream if streaming else unary


class _AioInterceptor(grpc_aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, verifier: TokenVerifier, exempt: frozenset[str]) -> None:
        self.verifier, self.exempt = verifier, exempt

    async def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or details.method in self.exempt:
            return handler
        return _rewrap(handler, self._wrap)

    async def _admit(self, context: Any) -> Identity:
        outcome = await adecide(self.verifier, _header(context))
        if isinstance(outcome, Identity):
            return outcome
        await context.abort(_code(outcome), outcome.message)
        raise AssertionError("context.abort returns only by raising")  # pragma: no cover

    def _wrap(self, behavior: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
        async def unary(request: Any, context: Any) -> Any:
            _IDENTITY.set(await self._admit(context))  # each call is a task of its own: its own context
            return await behavior(request, context)

        async def stream(request: Any, context: Any) -> Any:
            _IDENTITY.set(await self._admit(context))
            result = behavior(request, context)
            if hasattr(result, "__aiter__"):  # an async generator handler
                async for item in result:
                    yield item
            else:  # a handler that writes with context.write()
                await result

        return stream if streaming else unary


def server_interceptor(verifier: TokenVerifier, *, exempt: Iterable[str] = HEALTH) -> grpc.ServerInterceptor:
    """A ``grpc.server(interceptors=[...])`` interceptor checking every call's token."""
    return _Interceptor(verifier, frozenset(exempt))


def aio_server_interceptor(
    verifier: TokenVerifier, *, exempt: Iterable[str] = HEALTH
) -> Union[grpc_aio.ServerInterceptor, Any]:
    """A ``grpc.aio.server(interceptors=[...])`` interceptor checking every call's token."""
    return _AioInterceptor(verifier, frozenset(exempt))

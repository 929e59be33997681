"""gRPC integration (``grpcio``, sync and ``grpc.aio``): call credentials that send the current
projected token, and an interceptor that retries ``UNAUTHENTICATED`` once with a re-read token.

```python
import grpc
from sa_token.grpc import call_credentials, channel_credentials, intercept_channel, aio_interceptor

creds = channel_credentials(source, root_certificates=ca_pem)    # TLS + the rotating token
channel = intercept_channel(grpc.secure_channel(target, creds), source)
# asyncio: channels take their interceptors when they are made
channel = grpc.aio.secure_channel(target, creds, interceptors=[aio_interceptor(source)])
```

``grpc.access_token_call_credentials(token)`` wraps one fixed string; these call credentials
ask the [`TokenSource`][sa_token.TokenSource] for every call. gRPC runs the metadata plugin in
a thread of its own (or, with some I/O managers, on the event loop): it answers from memory, and
when a file read is due it does the read in a short-lived thread of its own and answers from
there, so it never blocks whichever thread gRPC called it on.

gRPC sends call credentials only over a secure channel (TLS, or
``grpc.local_channel_credentials()`` for a loopback or Unix-socket peer: pass it as
``channel_credentials(source, base=...)``). The interceptor retries unary-unary calls only (a
request stream cannot be replayed, and a response stream may have delivered messages), once,
and only when the re-read gave a different token; the rules are those of `sa_token._flow`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

try:
    import grpc
    from grpc import aio as grpc_aio
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("sa_token.grpc needs the grpcio package: pip install 'sa-token[grpc]'") from exc

from ._flow import Attempt, BearerFlow, Reply, bearer, host_allowed, read_nowait
from ._source import require_source
from .errors import TokenError

if TYPE_CHECKING:
    from ._source import TokenSource

__all__ = ["aio_interceptor", "call_credentials", "channel_credentials", "intercept_channel"]

_KEY = "authorization"  # gRPC metadata keys are lower-case


class _Plugin(grpc.AuthMetadataPlugin):  # type: ignore[misc]
    def __init__(self, flow: BearerFlow) -> None:
        self.flow = flow

    def __repr__(self) -> str:
        return f"sa_token.grpc call credentials ({self.flow!r})"

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        if not host_allowed(context.service_url, self.flow.hosts):
            callback((), None)
            return
        held = read_nowait(self.flow.source)
        if held is None:  # a file read is due: not on gRPC's thread, which may be an event loop
            reader = threading.Thread(target=self._read, args=(callback,), name="sa-token-grpc", daemon=True)
            reader.start()
            return
        callback(((_KEY, bearer(held)),), None)

    def _read(self, callback: grpc.AuthMetadataPluginCallback) -> None:
        try:
            held = self.flow.source.current()
        except TokenError as exc:  # the call fails with it (no token in the message)
            callback((), exc)
            return
        callback(((_KEY, bearer(held)),), None)


def call_credentials(
    source: TokenSource, *, hosts: Union[str, Iterable[str], None] = None
) -> grpc.CallCredentials:
    """Call credentials sending ``authorization: Bearer <current token>`` with every call.

    Args:
        source: where the token comes from.
        hosts: send it only to these hosts (matched against the call's ``service_url``, an
            ``https://host:port/Service`` URL); default: every channel they are used on.
    """
    plugin = _Plugin(BearerFlow(source, hosts=hosts, client="grpc", what="sa_token.grpc.call_credentials()"))
    return grpc.metadata_call_credentials(plugin, name="sa-token")


def channel_credentials(
    source: TokenSource,
    *,
    root_certificates: Optional[bytes] = None,
    private_key: Optional[bytes] = None,
    certificate_chain: Optional[bytes] = None,
    base: Optional[grpc.ChannelCredentials] = None,
    hosts: Union[str, Iterable[str], None] = None,
) -> grpc.ChannelCredentials:
    """TLS channel credentials (``grpc.ssl_channel_credentials`` with these arguments, or
    ``base``) composed with [`call_credentials`][sa_token.grpc.call_credentials]."""
    require_source(source, "sa_token.grpc.channel_credentials()")
    if base is None:
        base = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
    return grpc.composite_channel_credentials(base, call_credentials(source, hosts=hosts))


def _attempt(flow: BearerFlow, details: Any) -> Optional[Attempt]:
    metadata = details.metadata or ()
    return flow.attempt("", has_authorization=any(key.lower() == _KEY for key, _ in metadata))


class _Interceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, source: TokenSource) -> None:
        self.flow = BearerFlow(source, client="grpc", what="sa_token.grpc.intercept_channel()")

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        attempt = _attempt(self.flow, details)
        if attempt is None:
            return continuation(details, request)
        held = attempt.step()  # the token current when the call starts: what the plugin sends
        while True:
            call = continuation(details, request)
            if call.code() != grpc.StatusCode.UNAUTHENTICATED:
                return call  # the attempt ends here
            held = attempt.step(Reply())
            if held is None:
                return call


class _AioInterceptor(grpc_aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, source: TokenSource) -> None:
        self.flow = BearerFlow(source, client="grpc", what="sa_token.grpc.aio_interceptor()")

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        attempt = _attempt(self.flow, details)
        if attempt is None:
            return await continuation(details, request)
        held = await attempt.astep(to_thread=asyncio.to_thread)
        while True:
            call = await continuation(details, request)
            if await call.code() != grpc.StatusCode.UNAUTHENTICATED:
                return call  # the attempt ends here
            held = await attempt.astep(Reply(), to_thread=asyncio.to_thread)
            if held is None:
                return call


def intercept_channel(channel: grpc.Channel, source: TokenSource) -> grpc.Channel:
    """Wrap a sync channel so that a unary-unary call answered ``UNAUTHENTICATED`` makes the
    source re-read the file and is sent once more, if the token changed. A call that carries
    its own ``authorization`` metadata is left alone. The interceptor waits for the call's
    status, so ``.future()`` calls complete before they return."""
    require_source(source, "sa_token.grpc.intercept_channel()")
    if isinstance(channel, grpc_aio.Channel):
        raise TypeError(
            "grpc.aio channels take interceptors when they are made: "
            "grpc.aio.secure_channel(target, creds, interceptors=[sa_token.grpc.aio_interceptor(source)])"
        )
    return grpc.intercept_channel(channel, _Interceptor(source))


def aio_interceptor(source: TokenSource) -> grpc_aio.UnaryUnaryClientInterceptor:
    """[`intercept_channel`][sa_token.grpc.intercept_channel] for ``grpc.aio``: pass it in
    ``grpc.aio.secure_channel(..., interceptors=[...])``. Token reads that need the file run
    in a worker thread."""
    return _AioInterceptor(source)

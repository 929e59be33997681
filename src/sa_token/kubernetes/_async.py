"""What the two asyncio Kubernetes clients (``kubernetes.aio`` and ``kubernetes_asyncio``) share:
the token hook that reads in a worker thread, and the ``ApiClient`` body (CA rotation, close,
the 401 retry through `sa_token._incluster.asend`). No client library is imported here."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Callable, Optional, TypeVar

from sa_token._flow import bearer, read_nowait
from sa_token._incluster import TokenHook, asend

__all__ = ["AsyncApiClient", "AsyncTokenHook"]

R = TypeVar("R")


class AsyncApiClient:
    """What the two asyncio ``ApiClient`` classes share (mixed in before the client's own):
    the hook, the REST clients retired by a CA rotation (closed with the client), and the
    request through the attempt (`asend`). Each client says how it builds a REST client for a
    new CA (`_sa_rest_for`) and where its requests pass (its ``request`` or ``call_api``)."""

    configuration: Any
    rest_client: Any

    def _sa_setup(self) -> None:
        hook = self.configuration.refresh_api_key_hook
        self._sa_hook: Optional[AsyncTokenHook] = hook if isinstance(hook, AsyncTokenHook) else None
        self._sa_ca_generation = 0
        self._sa_retired: list[Any] = []

    def _sa_check_ca(self) -> None:
        """A new valid ``ca.crt`` gives the next request a new REST client (a new aiohttp
        session); the old one keeps serving requests in flight (watches)."""
        hook = self._sa_hook
        if hook is None or hook.ca is None:
            return
        conf = self.configuration
        if conf.ssl_ca_cert != hook.ca.path or getattr(conf, "ca_cert_data", None) is not None:
            return  # the caller chose other TLS settings
        ca = hook.ca
        pem = ca.pem  # a stat at most every check_interval; inotify does the rest off the loop
        generation = ca.generation
        if generation == self._sa_ca_generation:
            return
        first = self._sa_ca_generation == 0
        self._sa_ca_generation = generation
        if first and not self._sa_rest_needs_pem():
            return  # the REST client just built loaded ca.crt as CABundle validated it
        new = self._sa_rest_for(pem)
        if new is None:
            return
        old, self.rest_client = self.rest_client, new
        self._sa_retired.append(old)  # may carry a watch in flight: closed with the client

    def _sa_rest_needs_pem(self) -> bool:
        """Whether the REST client the base class built must be replaced at once."""
        return True

    def _sa_rest_for(self, pem: bytes) -> Any:
        """A REST client verifying with ``pem`` (``None``: keep the current one)."""
        raise NotImplementedError

    async def close(self) -> None:
        retired, self._sa_retired = self._sa_retired, []
        for rest in retired:
            await rest.close()
        await super().close()  # type: ignore[misc]

    async def _sa_send(
        self, url: str, headers: Optional[dict[str, Any]], transmit: Callable[[dict[str, Any]], Awaitable[R]],
        api_exception: type[BaseException],
    ) -> R:
        self._sa_check_ca()
        hook = self._sa_hook
        ours = hook is not None and self.configuration.refresh_api_key_hook is hook
        flow = hook.flow if hook is not None and ours else None
        return await asend(flow, url, headers, transmit, api_exception)


class AsyncTokenHook(TokenHook):
    """The hook for the asyncio clients, which await its result when it is a coroutine: no
    coroutine (and no await) while the token is cached; a file read runs in a worker thread."""

    def __call__(self, configuration: Any) -> Optional[Awaitable[None]]:
        held = read_nowait(self.source)
        if held is not None:
            self._set(configuration, bearer(held))
            return None
        return self._slow(configuration)

    async def _slow(self, configuration: Any) -> None:
        self._set(configuration, bearer(await asyncio.to_thread(self.source.current)))


# ----------------------------------------------------------------------- the REST clients ----

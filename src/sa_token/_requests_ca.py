"""A requests adapter that follows a rotating ``ca.crt``: re-exported by `sa_token.requests`
(which checks that requests is installed first), as
[`CAReloadingAdapter`][sa_token.requests.CAReloadingAdapter]."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from requests.adapters import DEFAULT_POOLBLOCK, HTTPAdapter

from ._urllib3 import pool_context

if TYPE_CHECKING:
    from requests import PreparedRequest, Response

    from ._ca import CABundle

__all__ = ["CAReloadingAdapter"]


class CAReloadingAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` that verifies servers against a [`CABundle`][sa_token.CABundle] and follows
    its rotations: when the bundle changes, new connections use the new CA and the pooled ones,
    verified against the old CA, are closed (idle ones at once, busy ones when released).

    ```python
    ca = CABundle("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
    session.mount("https://", CAReloadingAdapter(ca))
    ```

    It trusts exactly the bundle (not certifi, not ``REQUESTS_CA_BUNDLE``); a ``verify=<path>``
    is ignored. ``verify=False`` and client certificates (``cert=``) are refused with a
    ``ValueError``: they would change the bundle's shared ``SSLContext``; mount a plain
    ``HTTPAdapter`` for those hosts. Other keyword arguments go to ``HTTPAdapter``.
    """

    def __init__(self, ca: CABundle, **kwargs: Any) -> None:
        self.ca = ca
        self._ca_lock = threading.Lock()
        # The bundle's context (to see when it changes) and the one the pools verify with.
        self._ca_context, self._ssl_context = pool_context(ca)
        super().__init__(**kwargs)

    def __repr__(self) -> str:
        return f"CAReloadingAdapter({self.ca!r})"

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = DEFAULT_POOLBLOCK, **pool_kwargs: Any
    ) -> None:
        self._pool_args = (connections, maxsize, block, dict(pool_kwargs))
        pool_kwargs["ssl_context"] = self._ssl_context
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        proxy_kwargs["ssl_context"] = self._ssl_context
        return super().proxy_manager_for(proxy, **proxy_kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:  # noqa: ARG002
        # HTTPAdapter would point the pool at certifi (or a verify= path), and urllib3 would load
        # it into the bundle's shared context: verification must come from the context alone.
        if verify is False or cert:
            raise ValueError(
                "CAReloadingAdapter verifies servers with its CA bundle: verify=False and client "
                "certificates (cert=) are not supported; mount a plain HTTPAdapter for them"
            )
        conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = None
        conn.ca_cert_dir = None

    def send(self, request: PreparedRequest, *args: Any, **kwargs: Any) -> Response:
        self._follow_ca()
        response: Response = super().send(request, *args, **kwargs)
        return response

    def _follow_ca(self) -> None:
        ctx = self.ca.ssl_context()  # the same object until the bundle changes
        if ctx is self._ca_context:
            return
        with self._ca_lock:
            if ctx is self._ca_context:
                return
            old_pools, old_proxies = self.poolmanager, dict(self.proxy_manager)
            self._ca_context, self._ssl_context = pool_context(self.ca)
            connections, maxsize, block, pool_kwargs = self._pool_args
            self.init_poolmanager(connections, maxsize, block, **pool_kwargs)
            self.proxy_manager.clear()
        # urllib3 closes idle connections now and in-use ones when they are returned.
        old_pools.clear()
        for manager in old_proxies.values():
            manager.clear()

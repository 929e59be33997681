"""In-cluster configuration for ``kubernetes_asyncio``, with rotating tokens and CA.

```python
from sa_token.kubernetes.asyncio import ApiClient, load_incluster_config
load_incluster_config()
async with ApiClient() as api:
    pods = await kubernetes_asyncio.client.CoreV1Api(api).list_namespaced_pod("default")
```

Compared with ``kubernetes_asyncio.config.load_incluster_config()``:

* the token comes from a [`TokenSource`][sa_token.TokenSource] through ``refresh_api_key_hook``; the
  library's own hook re-reads the file with a blocking ``open()`` on the event loop once a
  minute, ours returns nothing while the token is cached and otherwise a coroutine that reads
  in a worker thread. The hook is shared by every deep copy of the
  configuration.
* [`ApiClient`][sa_token.kubernetes.asyncio.ApiClient] retries a 401 once with a re-read token
  (its ``request`` method is the
  seam: it sees the headers and the ``ApiException`` the REST client raises), and follows CA
  rotations: ``kubernetes_asyncio``'s REST client builds ``ssl.create_default_context(cafile=)``
  once, so a rotated cluster CA otherwise fails every new connection until a restart. When the
  [`CABundle`][sa_token.CABundle] sees a new valid ``ca.crt``, the next request gets a new REST
  client (new aiohttp session) built from the file; the old one keeps serving requests in
  flight and is closed with the ``ApiClient``. An unusable new ``ca.crt`` keeps the old client.
* ``kubernetes_asyncio``'s ``CoreV1Api()`` without an ``ApiClient`` creates a stock one: pass
  an [`ApiClient`][sa_token.kubernetes.asyncio.ApiClient] to get the 401 retry and the CA rotation.

Needs the ``kubernetes-asyncio`` extra: ``pip install 'sa-token[kubernetes-asyncio]'`` (not the
``kubernetes`` package). The old path, ``sa_token.kubernetes_asyncio``, is this module too.
"""

from __future__ import annotations

import copy
import logging
import ssl
from typing import Any, Optional

try:
    import kubernetes_asyncio.client as _client
    import kubernetes_asyncio.client.rest as _rest
    from kubernetes_asyncio.client.exceptions import ApiException as _ApiException
    from kubernetes_asyncio.config.config_exception import ConfigException as _ConfigException
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "sa_token.kubernetes.asyncio needs kubernetes_asyncio: pip install 'sa-token[kubernetes-asyncio]'"
    ) from _exc

from sa_token import _fmt
from sa_token._incluster import (
    DEFAULT_CA_PATH,
    DEFAULT_NAMESPACE_PATH,
    DEFAULT_TOKEN_PATH,
    Loader,
    read_namespace,
)
from sa_token.errors import TokenError
from sa_token.kubernetes._async import AsyncApiClient, AsyncTokenHook

__all__ = [
    "DEFAULT_CA_PATH",
    "DEFAULT_NAMESPACE_PATH",
    "DEFAULT_TOKEN_PATH",
    "ApiClient",
    "NotInClusterError",
    "load_incluster_config",
    "read_namespace",
]

log = logging.getLogger("sa_token")

# kubernetes_asyncio's auth_settings() only looks at "BearerToken".
_KEYS = ("BearerToken",)


class NotInClusterError(TokenError, _ConfigException):
    """Not running in a pod (see [`NotInClusterError`][sa_token.kubernetes.NotInClusterError]). Also a
    ``kubernetes_asyncio.config.ConfigException``."""


# Configure ``kubernetes_asyncio`` for the pod's cluster (`sa_token._incluster.Loader` has the options);
# ``set_default`` installs only the ``Configuration`` default: an ``ApiClient`` holds an aiohttp
# session bound to one event loop.
load_incluster_config = Loader(
    _client.Configuration, hook=AsyncTokenHook, keys=_KEYS, client="kubernetes_asyncio",
    not_in_cluster=NotInClusterError, install=_client.Configuration.set_default,
)


class ApiClient(AsyncApiClient, _client.ApiClient):
    """``kubernetes_asyncio.client.ApiClient`` that retries a 401 once with a re-read token and
    follows CA rotations. Same arguments; plain behaviour for configurations not made by
    [`load_incluster_config()`][sa_token.kubernetes_asyncio.load_incluster_config]."""

    def __init__(
        self, configuration: Optional[_client.Configuration] = None, *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(configuration, *args, **kwargs)
        self._sa_setup()
        self._sa_check_ca()

    def _sa_rest_needs_pem(self) -> bool:
        return False  # the REST client just built loaded ca.crt as CABundle validated it

    def _sa_rest_for(self, pem: bytes) -> Any:  # noqa: ARG002 - it takes the file, not the PEM
        # kubernetes_asyncio only takes a CA *file*: it is re-read here, right after CABundle
        # validated it. If it changed again in between and is now unusable, keep the old client.
        try:
            return _rest.RESTClientObject(copy.copy(self.configuration))
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning("sa-token: cannot load the new CA bundle %s (%s); keeping the old one",
                        _fmt.path(self.configuration.ssl_ca_cert), _fmt.text(exc))
            return None

    async def request(
        self,
        method: str,
        url: str,
        query_params: Any = None,
        headers: Optional[dict[str, Any]] = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        transmit: Any = super().request
        def send(sent: dict[str, Any]) -> Any:
            return transmit(method, url, query_params, sent, *args, **kwargs)

        return await self._sa_send(url, headers, send, _ApiException)

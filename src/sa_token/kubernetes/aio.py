"""In-cluster configuration for the official asyncio client ``kubernetes.aio`` (kubernetes >= 37).

```python
from sa_token.kubernetes.aio import ApiClient, load_incluster_config
load_incluster_config()
async with ApiClient() as api:
    pods = await kubernetes.aio.client.CoreV1Api(api).list_namespaced_pod("default")
```

Same behaviour as `sa_token.kubernetes`, adapted to asyncio:

* the ``refresh_api_key_hook`` returns nothing while the token is cached (no file I/O, no
  coroutine); when a re-read is due it returns a coroutine that reads the file in
  a worker thread (never on the event loop);
* [`ApiClient`][sa_token.kubernetes.aio.ApiClient] retries a 401 once with a re-read token and
  follows CA rotations. The stock ``kubernetes.aio`` REST client builds its ``SSLContext``
  once, so without it a rotated cluster CA fails every new connection until the process
  restarts. On a new valid ``ca.crt``
  the next request gets a new REST client (a new aiohttp session) built from the new PEM; the
  old one keeps serving requests already in flight (watches) and is closed with the
  ``ApiClient``.
* ``set_default`` only installs the ``Configuration`` default: an ``ApiClient`` holds an aiohttp
  session bound to one event loop, so create [`ApiClient`][sa_token.kubernetes.aio.ApiClient]
  yourself (``async with``).

Needs the ``kubernetes`` extra: ``pip install 'sa-token[kubernetes]'``.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

try:
    import kubernetes.aio.client as _aio_client
    import kubernetes.aio.client.rest as _aio_rest
    from kubernetes.aio.client.exceptions import ApiException as _ApiException
    from kubernetes.aio.config.config_exception import ConfigException as _ConfigException
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "sa_token.kubernetes.aio needs the kubernetes package (>= 37, with kubernetes.aio): "
        "pip install 'sa-token[kubernetes]'"
    ) from _exc

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

_KEYS = ("BearerToken", "authorization")


class NotInClusterError(TokenError, _ConfigException):
    """Not running in a pod (see [`NotInClusterError`][sa_token.kubernetes.NotInClusterError]). Also a
    ``kubernetes.aio.config.ConfigException``."""


# Configure ``kubernetes.aio`` for the pod's cluster (`sa_token._incluster.Loader` has the options);
# ``set_default`` installs only the ``Configuration`` default: an ``ApiClient`` holds an aiohttp
# session bound to one event loop.
load_incluster_config = Loader(
    _aio_client.Configuration, hook=AsyncTokenHook, keys=_KEYS, client="kubernetes.aio",
    not_in_cluster=NotInClusterError, install=_aio_client.Configuration.set_default,
)


class ApiClient(AsyncApiClient, _aio_client.ApiClient):
    """``kubernetes.aio.client.ApiClient`` that retries a 401 once with a re-read token and
    follows CA rotations. Takes the same arguments; plain behaviour for configurations not made
    by `load_incluster_config()`."""

    def __init__(
        self, configuration: Optional[_aio_client.Configuration] = None, *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(configuration, *args, **kwargs)
        self._sa_setup()
        self._sa_check_ca()

    def _sa_rest_for(self, pem: bytes) -> Any:
        rest_conf = copy.copy(self.configuration)  # shallow: only the CA settings differ
        rest_conf.ssl_ca_cert = None
        rest_conf.ca_cert_data = pem.decode("ascii")
        return _aio_rest.RESTClientObject(rest_conf)

    async def call_api(
        self,
        method: str,
        url: str,
        header_params: Optional[dict[str, Any]] = None,
        body: Any = None,
        post_params: Any = None,
        _request_timeout: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        transmit: Any = super().call_api
        def send(headers: dict[str, Any]) -> Any:
            return transmit(method, url, headers, body, post_params, _request_timeout, *args, **kwargs)

        return await self._sa_send(url, header_params, send, _ApiException)

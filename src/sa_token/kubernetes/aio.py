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
import os
from collections.abc import Mapping
from typing import Any, Optional, Union

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

from sa_token._ca import CABundle
from sa_token._incluster import (
    DEFAULT_CA_PATH,
    DEFAULT_NAMESPACE_PATH,
    DEFAULT_TOKEN_PATH,
    NAMESPACE_NEXT_TO_TOKEN,
    configure,
    read_namespace,
    resolve,
)
from sa_token._source import TokenSource
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


def load_incluster_config(
    configuration: Optional[_aio_client.Configuration] = None,
    *,
    token_path: Union[str, os.PathLike[str]] = DEFAULT_TOKEN_PATH,
    ca_path: Union[str, os.PathLike[str]] = DEFAULT_CA_PATH,
    namespace_path: Union[str, os.PathLike[str], None] = NAMESPACE_NEXT_TO_TOKEN,
    source: Optional[TokenSource] = None,
    ca: Optional[CABundle] = None,
    set_default: Optional[bool] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> _aio_client.Configuration:
    """Configure ``kubernetes.aio`` for the pod's cluster; returns the configuration.

    Options as [`sa_token.kubernetes.load_incluster_config()`][sa_token.kubernetes.load_incluster_config].
    Synchronous (it reads the token and CA files once); call it at startup, before the event loop is busy.
    """
    found = resolve(environ, token_path, ca_path, namespace_path, source, ca, NotInClusterError)
    if set_default is None:
        set_default = configuration is None
    hook = AsyncTokenHook(found.source, found.ca, _KEYS, "kubernetes.aio")
    configuration = configure(configuration, _aio_client.Configuration, found, hook)
    if set_default:
        _aio_client.Configuration.set_default(configuration)
    return configuration


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

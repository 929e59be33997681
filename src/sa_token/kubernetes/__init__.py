"""In-cluster configuration for the official ``kubernetes`` client, with rotating tokens and CA.

```python
from sa_token.kubernetes import load_incluster_config
load_incluster_config()                 # instead of kubernetes.config.load_incluster_config()
kubernetes.client.CoreV1Api().list_namespaced_pod("default")
```

What it changes compared with ``kubernetes.config.load_incluster_config()``:

* the token comes from a [`TokenSource`][sa_token.TokenSource] (re-read on the kubelet's rotation,
  checked for expiry, last good token kept when a re-read fails) through
  ``Configuration.refresh_api_key_hook``. The hook object survives the deep copies that
  ``Configuration.set_default``/``get_default_copy`` and ``ApiClient()`` make, so every copy sends
  the current token, as ``Bearer <token>``, under both ``api_key`` keys the client versions
  look at (``BearerToken`` since 36, ``authorization`` before);
* custom paths (``token_path=``, ``ca_path=``) and a typed
  [`NotInClusterError`][sa_token.kubernetes.NotInClusterError] (also a ``kubernetes.config.ConfigException``)
  naming what is missing;
* [`ApiClient`][sa_token.kubernetes.ApiClient] (installed as the default ``ApiClient`` unless
  ``set_default=False``, so ``CoreV1Api()`` uses it) adds what a configuration alone cannot do:

  - a 401 answer makes the token source re-read the file (``invalidate(older_than=<request
    start>)``) and the request is sent once more with the re-read token. A 401 means the API
    server rejected the credentials before acting, so the retry is safe for every method;
  - CA rotation: the REST client verifies with the PEM of a [`CABundle`][sa_token.CABundle]
    (``ca_cert_data``), not the file path that urllib3 would re-read for every new connection.
    When ``ca.crt`` changes to a valid bundle, the next request gets a new connection pool
    built from it (idle connections of the old pool are closed, requests in flight finish); an
    unusable new ``ca.crt`` (empty, garbage, missing mid-swap) keeps the previous CA.

A plain ``kubernetes.client.ApiClient(configuration)`` still gets the rotating token, but no 401
retry, and urllib3 then loads ``ca.crt`` itself for each new connection (so a bad file breaks new
connections until it is fixed).

Needs the ``kubernetes`` extra: ``pip install 'sa-token[kubernetes]'``.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections.abc import Mapping
from typing import Any, Optional, Union

try:
    import kubernetes.client as _k8s_client
    from kubernetes.config.config_exception import ConfigException as _ConfigException
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "sa_token.kubernetes needs the kubernetes package: pip install 'sa-token[kubernetes]'"
    ) from _exc

from sa_token._ca import CABundle
from sa_token._incluster import (
    DEFAULT_CA_PATH,
    DEFAULT_NAMESPACE_PATH,
    DEFAULT_TOKEN_PATH,
    TokenHook,
    read_namespace,
    resolve,
)
from sa_token._source import TokenSource
from sa_token.errors import TokenError

__all__ = [
    "DEFAULT_CA_PATH",
    "DEFAULT_NAMESPACE_PATH",
    "DEFAULT_TOKEN_PATH",
    "ApiClient",
    "NotInClusterError",
    "load_incluster_config",
    "read_namespace",
]

# The api_key entries the client versions read: "BearerToken" (>= 36), "authorization" (older).
_KEYS = ("BearerToken", "authorization")


class NotInClusterError(TokenError, _ConfigException):
    """Not running in a pod: the service environment variables are missing or empty, or the
    ServiceAccount token or CA file does not exist. Also a ``kubernetes.config.ConfigException``,
    so the usual ``except ConfigException: load_kube_config()`` fallback keeps working."""


def load_incluster_config(
    configuration: Optional[_k8s_client.Configuration] = None,
    *,
    token_path: Union[str, os.PathLike[str]] = DEFAULT_TOKEN_PATH,
    ca_path: Union[str, os.PathLike[str]] = DEFAULT_CA_PATH,
    namespace_path: Union[str, os.PathLike[str], None] = DEFAULT_NAMESPACE_PATH,
    source: Optional[TokenSource] = None,
    ca: Optional[CABundle] = None,
    set_default: Optional[bool] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> _k8s_client.Configuration:
    """Configure ``kubernetes`` for the API server of the pod's cluster; returns the configuration.

    * ``configuration``: fill this one (default: a new ``Configuration``).
    * ``token_path``/``ca_path``: the ServiceAccount token and CA bundle (the kube-api-access
      paths by default).
      Or pass your own ``source`` (a [`TokenSource`][sa_token.TokenSource], e.g. with an audience) and ``ca``
      (a [`CABundle`][sa_token.CABundle]).
    * ``namespace_path``: the pod's namespace file; its content becomes
      ``configuration.namespace`` (None when the file does not exist; pass None to skip it).
    * ``set_default``: install the configuration as ``Configuration``'s default and an
      [`ApiClient`][sa_token.kubernetes.ApiClient] for it as ``ApiClient``'s default, so that ``CoreV1Api()``
      uses them. Default: True when no ``configuration`` was given (like the ``kubernetes`` loader).
    * ``environ``: where to find ``KUBERNETES_SERVICE_HOST``/``_PORT`` (``os.environ``).

    Raises [`NotInClusterError`][sa_token.kubernetes.NotInClusterError] outside a pod, and the
    [`sa_token.errors`][sa_token.errors] types for a token or CA file that exists but cannot be used.
    """
    found = resolve(environ, token_path, ca_path, namespace_path, source, ca, NotInClusterError)
    source, ca = found.source, found.ca
    if set_default is None:
        set_default = configuration is None
    if configuration is None:
        configuration = _k8s_client.Configuration()
    hook = TokenHook(source, ca, _KEYS)
    configuration.host = found.host
    configuration.ssl_ca_cert = ca.path
    conf: Any = configuration  # typed as Optional[Callable] in kubernetes; our hook is callable
    conf.namespace = found.namespace
    for key in _KEYS:
        configuration.api_key_prefix.pop(key, None)  # the value carries "Bearer " itself
    hook(configuration)  # fills api_key now; auth_settings() only looks for the key if present
    conf.refresh_api_key_hook = hook
    if set_default:
        _k8s_client.Configuration.set_default(configuration)
        api_client_class: Any = _k8s_client.ApiClient
        if hasattr(api_client_class, "set_default"):  # kubernetes >= 35
            api_client_class.set_default(ApiClient(configuration))
    return configuration


class ApiClient(_k8s_client.ApiClient):
    """``kubernetes.client.ApiClient`` that retries a 401 once with a re-read token and follows
    CA rotations (see the module documentation). Takes the same arguments.

    With a configuration not made by [`load_incluster_config()`][sa_token.kubernetes.load_incluster_config] it
    behaves exactly like the base class.
    """

    def __init__(
        self, configuration: Optional[_k8s_client.Configuration] = None, *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(configuration, *args, **kwargs)
        hook = self.configuration.refresh_api_key_hook
        self._sa_hook: Optional[TokenHook] = hook if isinstance(hook, TokenHook) else None
        self._sa_lock = threading.Lock()
        self._sa_ca_generation = 0
        self._sa_rest_config = self.configuration
        if self._sa_ca_pinned() is not None:
            self._sa_check_ca()

    def _sa_ca_pinned(self) -> Optional[CABundle]:
        """The CABundle to verify with, if the configuration still points at its file (the user
        did not switch to other TLS settings since)."""
        hook = self._sa_hook
        if hook is None or hook.ca is None:
            return None
        conf = self.configuration
        if conf.ssl_ca_cert != hook.ca.path or getattr(conf, "ca_cert_data", None) is not None:
            return None
        if not hasattr(conf, "ca_cert_data"):  # kubernetes too old to take PEM data
            return None
        return hook.ca

    def _sa_check_ca(self) -> None:
        ca = self._sa_ca_pinned()
        if ca is None:
            return
        pem = ca.pem  # re-checks the file at most every check_interval (inotify does the rest)
        generation = ca.generation
        if generation == self._sa_ca_generation:
            return
        with self._sa_lock:
            if generation == self._sa_ca_generation:
                return
            conf = copy.copy(self.configuration)  # shallow: only the CA settings differ
            conf.ssl_ca_cert = None
            conf.ca_cert_data = pem.decode("ascii")
            old, self.rest_client = self.rest_client, _k8s_client.rest.RESTClientObject(conf)
            self._sa_ca_generation = generation
        old.close()  # closes idle connections; requests in flight finish on theirs

    def call_api(
        self,
        method: str,
        url: str,
        header_params: Optional[dict[str, Any]] = None,
        body: Any = None,
        post_params: Any = None,
        _request_timeout: Any = None,
    ) -> Any:
        self._sa_check_ca()
        hook = self._sa_hook
        start = time.time()
        headers = dict(header_params) if header_params is not None else None
        response = super().call_api(method, url, headers, body, post_params, _request_timeout)
        if (
            response.status != 401
            or hook is None
            or header_params is None
            or "authorization" not in header_params
            or self.configuration.refresh_api_key_hook is not hook
        ):
            return response
        _release(response)
        hook.source.invalidate(older_than=start)
        retry_headers = dict(header_params)
        retry_headers["authorization"] = hook.header()
        return super().call_api(method, url, retry_headers, body, post_params, _request_timeout)


def _release(response: Any) -> None:
    """Give the 401 response's connection back to the pool."""
    raw = getattr(response, "response", None)
    try:
        if raw is not None:
            raw.drain_conn()
            raw.release_conn()
    except Exception:  # noqa: S110 - the connection is simply not reused
        pass

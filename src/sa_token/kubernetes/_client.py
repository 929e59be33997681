"""The official ``kubernetes`` client's in-cluster configuration: see `sa_token.kubernetes`."""

from __future__ import annotations

import logging
import threading
from typing import Any, Optional

try:
    import kubernetes.client as _k8s_client
    from kubernetes.client import rest as _k8s_rest
    from kubernetes.client.exceptions import ApiException as _ApiException
    from kubernetes.config.config_exception import ConfigException as _ConfigException
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "sa_token.kubernetes needs the kubernetes package: pip install 'sa-token[kubernetes]'"
    ) from _exc

from sa_token._incluster import (
    DEFAULT_CA_PATH,
    DEFAULT_NAMESPACE_PATH,
    DEFAULT_TOKEN_PATH,
    Loader,
    TokenHook,
    read_namespace,
    send,
)
from sa_token._urllib3 import pool_context
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

log = logging.getLogger("sa_token")

# The api_key entries the client versions read: "BearerToken" (>= 36), "authorization" (older).
_KEYS = ("BearerToken", "authorization")


class NotInClusterError(TokenError, _ConfigException):
    """Not running in a pod: the service environment variables are missing or empty, or the
    ServiceAccount token or CA file does not exist. Also a ``kubernetes.config.ConfigException``,
    so the usual ``except ConfigException: load_kube_config()`` fallback keeps working."""


def _install(configuration: _k8s_client.Configuration) -> None:
    """``set_default``: the default ``Configuration``, and an `ApiClient` for it as the default
    ``ApiClient`` (kubernetes >= 37), so that ``CoreV1Api()`` uses both."""
    _k8s_client.Configuration.set_default(configuration)
    api_client_class: Any = _k8s_client.ApiClient
    if hasattr(api_client_class, "set_default"):  # kubernetes >= 37
        api_client_class.set_default(ApiClient(configuration))
    else:
        log.warning(
            "sa-token: kubernetes %s has no default ApiClient: CoreV1Api() builds a plain one, "
            "which sends the rotating token but neither retries a 401 nor follows CA rotations; "
            "pass sa_token.kubernetes.ApiClient() to the API classes for both",
            getattr(_k8s_client, "__version__", "< 37"),
        )


# Configure ``kubernetes`` for the pod's cluster (`sa_token._incluster.Loader` has the options).
load_incluster_config = Loader(
    _k8s_client.Configuration, hook=TokenHook, keys=_KEYS, client="kubernetes",
    not_in_cluster=NotInClusterError, install=_install,
)


class ApiClient(_k8s_client.ApiClient):
    """``kubernetes.client.ApiClient`` that retries a 401 once with a re-read token and follows
    CA rotations (see the module documentation). Takes the same arguments.

    With a configuration not made by
    [`load_incluster_config`][sa_token.kubernetes.load_incluster_config] it behaves exactly
    like the base class.
    """

    def __init__(
        self, configuration: Optional[_k8s_client.Configuration] = None, *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(configuration, *args, **kwargs)
        if isinstance(self.configuration.refresh_api_key_hook, TokenHook):
            plain, self.rest_client = self.rest_client, _RESTClient(self.configuration)
            plain.pool_manager.clear()  # (kubernetes < 37 has no RESTClientObject.close)


class _RESTClient(_k8s_rest.RESTClientObject):
    """The REST client below our ``ApiClient``: every ``kubernetes`` version sends each request
    through its ``request`` method, with the headers as a dict (the seam for the exchange), and
    builds its urllib3 pools from ``connection_pool_kw`` (the seam for the CA)."""

    def __init__(self, configuration: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(configuration, *args, **kwargs)
        hook = configuration.refresh_api_key_hook
        self._sa_flow = hook.flow
        self._sa_ca = hook.ca if _ca_pinnable(configuration, hook) else None
        self._sa_ctx: Any = None
        self._sa_lock = threading.Lock()
        self._sa_follow_ca()

    def request(self, method: str, url: str, *args: Any, headers: Any = None, **kwargs: Any) -> Any:
        self._sa_follow_ca()
        transmit: Any = super().request
        return send(
            self._sa_flow, url, headers,
            lambda attempt: transmit(method, url, *args, headers=attempt, **kwargs), _ApiException,
        )

    def _sa_follow_ca(self) -> None:
        """Verify with the bundle's current ``SSLContext``: the same object until the bundle
        changes; then new pools get the new one (idle connections close now, busy ones when
        they are released)."""
        ca = self._sa_ca
        if ca is None:
            return
        ctx = ca.ssl_context()  # a stat at most every check_interval; inotify does the rest
        if ctx is self._sa_ctx:
            return
        with self._sa_lock:
            if ctx is self._sa_ctx:
                return
            self._sa_ctx = ctx
            pools = self.pool_manager
            # urllib3 would load ca_certs into the shared context: the context alone verifies.
            kw = pools.connection_pool_kw
            kw.update(ssl_context=pool_context(ca)[1], ca_certs=None)
            kw.pop("ca_cert_data", None)  # not a pool key in urllib3 1.26
            pools.clear()



def _ca_pinnable(conf: Any, hook: TokenHook) -> bool:
    """Whether the configuration still verifies with the hook's bundle in the way we set it up
    (the user did not switch to other TLS settings since, which a shared context cannot hold)."""
    return (
        hook.ca is not None
        and conf.ssl_ca_cert == hook.ca.path
        and bool(conf.verify_ssl)
        and not conf.cert_file
        and not conf.key_file
        and getattr(conf, "ca_cert_data", None) is None
    )

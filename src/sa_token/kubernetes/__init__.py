"""In-cluster configuration for the official ``kubernetes`` client, with rotating tokens and CA.

```python
from sa_token.kubernetes import load_incluster_config

load_incluster_config()                 # instead of kubernetes.config.load_incluster_config()
kubernetes.client.CoreV1Api().list_namespaced_pod("default")
```

What it changes compared with ``kubernetes.config.load_incluster_config()``:

* the token comes from a [`TokenSource`][sa_token.TokenSource] (re-read on the kubelet's
  rotation, checked for expiry, last good token kept when a re-read fails) through
  ``Configuration.refresh_api_key_hook``. The hook object survives the deep copies that
  ``Configuration.set_default``/``get_default_copy`` and ``ApiClient()`` make, so every copy sends
  the current token, as ``Bearer <token>``, under both ``api_key`` keys the client versions
  look at (``BearerToken`` since 36, ``authorization`` before);
* custom paths (``token_path=``, ``ca_path=``), the namespace file found next to the token, and
  a typed [`NotInClusterError`][sa_token.kubernetes.NotInClusterError] (also a
  ``kubernetes.config.ConfigException``) naming what is missing;
* [`ApiClient`][sa_token.kubernetes.ApiClient] adds what a configuration alone cannot do, on
  every ``kubernetes`` version from 29: a 401 answer makes the source re-read the file and the
  request is sent once more with the new token (the exchange of `sa_token._flow`; a 401 means
  the API server refused the credentials before acting, so the retry is safe for every method;
  watch streams reconnect through it too), and CA rotation (connections verify with the
  [`CABundle`][sa_token.CABundle]'s ``SSLContext``; a new valid ``ca.crt`` gives new
  connections the new CA, an unusable one keeps the previous CA). With kubernetes >= 37 it is
  installed as the default ``ApiClient`` unless ``set_default=False``, so ``CoreV1Api()`` uses
  it; older versions have no default ``ApiClient``: pass ``ApiClient()`` to the API classes
  (``load_incluster_config`` logs a warning saying so).

A plain ``kubernetes.client.ApiClient(configuration)`` still gets the rotating token, but no 401
retry, and urllib3 then loads ``ca.crt`` itself for each new connection (so a bad file breaks
new connections until it is fixed).

Needs the ``kubernetes`` extra: ``pip install 'sa-token[kubernetes]'``. The names here are
loaded at first use, so ``sa_token.kubernetes.asyncio`` (for ``kubernetes_asyncio``) works
without the ``kubernetes`` package; ``sa_token.kubernetes.aio`` is ``kubernetes.aio``'s.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sa_token.kubernetes._client import (
        DEFAULT_CA_PATH,
        DEFAULT_NAMESPACE_PATH,
        DEFAULT_TOKEN_PATH,
        ApiClient,
        NotInClusterError,
        load_incluster_config,
        read_namespace,
    )

__all__ = [
    "DEFAULT_CA_PATH",
    "DEFAULT_NAMESPACE_PATH",
    "DEFAULT_TOKEN_PATH",
    "ApiClient",
    "NotInClusterError",
    "load_incluster_config",
    "read_namespace",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'sa_token.kubernetes' has no attribute {name!r}")
    from sa_token.kubernetes import _client  # raises the install hint without the kubernetes package

    value = getattr(_client, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

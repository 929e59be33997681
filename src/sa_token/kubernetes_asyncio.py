"""The old path of `sa_token.kubernetes.asyncio` (in-cluster configuration for
``kubernetes_asyncio``, with rotating tokens and CA): the same module, under both names."""

import sys

from sa_token.kubernetes import asyncio as _module
from sa_token.kubernetes.asyncio import (
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

sys.modules[__name__] = _module  # one module object: the same classes, state and patches

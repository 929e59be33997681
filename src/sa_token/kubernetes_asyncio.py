"""The old path of `sa_token.kubernetes.asyncio` (in-cluster configuration for
``kubernetes_asyncio``, with rotating tokens and CA): the same module, under both names."""

import sys

from sa_token.kubernetes import asyncio as _module
from sa_token.kubernetes.asyncio import *  # noqa: F403 - its names, for type checkers
from sa_token.kubernetes.asyncio import __all__  # noqa: F401 - the same public names

sys.modules[__name__] = _module  # one module object: the same classes, state and patches

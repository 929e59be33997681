"""Metrics: how long tokens and exchanged credentials have left, whether they rotate and reload.

```python
from sa_token.metrics import register            # prometheus_client: pip install 'sa-token[prometheus]'
register()

from sa_token.metrics.otel import instrument     # OpenTelemetry: pip install 'sa-token[otel]'
instrument()
```

Both read every live [`TokenSource`][sa_token.TokenSource], [`CABundle`][sa_token.CABundle]
and exchanged credential when metrics are collected (`TokenSource.status`, no I/O): nothing
runs on the request path. The families, their labels and how several objects on one file
collapse into one series are described in docs/monitoring.md.

`register` lives in a submodule imported on first use, so that `sa_token.metrics.otel` works
without `prometheus_client` installed; `from sa_token.metrics import register` still fails at
once, with the command that installs it, when `prometheus_client` is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["SaTokenCollector", "register"]

if TYPE_CHECKING:
    from ._prometheus import SaTokenCollector, register


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import _prometheus

        return getattr(_prometheus, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""OpenTelemetry: sa-token's metrics as observable instruments (extra ``otel``).

```python
from sa_token.metrics.otel import instrument

instrument()   # the global MeterProvider, or instrument(meter_provider=provider)
```

The instruments carry the Prometheus families' names (counters without ``_total``, which
OpenTelemetry's Prometheus exporters add back), so a dashboard works with either exporter.
Their callbacks read the live objects when the reader collects: nothing runs on the request path.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Callable, Optional

try:
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
except ImportError as exc:
    raise ImportError(
        "sa_token.metrics.otel needs the opentelemetry-api package: pip install 'sa-token[otel]'"
    ) from exc

from sa_token._hub import at_fork_in_child
from sa_token._version import __version__

from . import _readings
from ._readings import CASeries, Family, TokenSeries

__all__ = ["instrument"]

Callback = Callable[[CallbackOptions], Iterable[Observation]]


def _token(value: Callable[[TokenSeries], float]) -> Callback:
    def callback(_options: CallbackOptions) -> list[Observation]:
        series = _readings.token_series()
        return [Observation(value(s), {"path": s.path, "audience": s.audience}) for s in series]

    return callback


def _reloads(_options: CallbackOptions) -> list[Observation]:
    out = []
    for s in _readings.token_series():
        out.append(Observation(s.reads, {"path": s.path, "audience": s.audience, "result": "success"}))
        out.append(Observation(s.failures, {"path": s.path, "audience": s.audience, "result": "failure"}))
    return out


def _auth_retries(_options: CallbackOptions) -> list[Observation]:
    return [Observation(n, {"client": client}) for client, n in _readings.auth_retries().items()]


def _credentials(_options: CallbackOptions) -> list[Observation]:
    return [
        Observation(c.expiry, {"kind": c.kind, "path": c.path, "audience": c.audience})
        for c in _readings.credential_series()
    ]


def _ca(value: Callable[[CASeries], float]) -> Callback:
    def callback(_options: CallbackOptions) -> list[Observation]:
        return [Observation(value(b), {"path": b.path}) for b in _readings.ca_series()]

    return callback


def _events(family: Family) -> Callback:
    def callback(_options: CallbackOptions) -> list[Observation]:
        return [Observation(n, labels) for labels, n in _readings.events(family)]

    return callback


# What each instrument observes (the names, units and help texts: `_readings.FAMILIES`).
_CALLBACKS: dict[Family, Callback] = {
    _readings.EXPIRY: _token(lambda s: s.expiry),
    _readings.ROTATION_DUE: _token(lambda s: s.rotation_due),
    _readings.LAST_RELOAD: _token(lambda s: s.last_reload),
    _readings.RELOADS: _reloads,
    _readings.STALE: _token(lambda s: float(s.stale)),
    _readings.WATCH_INOTIFY: _token(lambda s: float(s.inotify)),
    _readings.AUTH_RETRIES: _auth_retries,
    _readings.CREDENTIAL_EXPIRY: _credentials,
    _readings.CA_GENERATION: _ca(lambda b: b.generation),
    _readings.CA_LAST_CHANGE: _ca(lambda b: b.last_change),
    **{family: _events(family) for family in _readings.EVENT_FAMILIES},
}
_LOCK = threading.Lock()


def _after_fork_in_child() -> None:  # the lock may have been held by a thread that is gone
    global _LOCK  # noqa: PLW0603
    _LOCK = threading.Lock()


at_fork_in_child(_after_fork_in_child)
_DONE: weakref.WeakSet[MeterProvider] = weakref.WeakSet()


def instrument(meter_provider: Optional[MeterProvider] = None) -> None:
    """Report sa-token's metrics through ``meter_provider`` (default: the global one).

    Observable gauges and counters whose callbacks read every live
    [`TokenSource`][sa_token.TokenSource], [`CABundle`][sa_token.CABundle] and exchanged
    credential at each collection: the same data, names and attributes as
    [`register`][sa_token.metrics.register] exports to Prometheus. Idempotent per provider.

    Args:
        meter_provider: The provider to create the instruments with.
    """
    provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
    with _LOCK:
        if provider in _DONE:
            return
        meter = provider.get_meter("sa_token", __version__)
        for family in _readings.FAMILIES:
            counter = family.kind == "counter"
            create = meter.create_observable_counter if counter else meter.create_observable_gauge
            create(family.name, [_CALLBACKS[family]], unit=family.unit, description=family.help)
        _DONE.add(provider)

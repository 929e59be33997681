"""The Prometheus collector: one for every live source, bundle and exchanged credential."""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Iterator
from typing import Optional

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:
    raise ImportError(
        "sa_token.metrics needs the prometheus-client package: pip install 'sa-token[prometheus]'"
    ) from exc

from sa_token._hub import at_fork_in_child

from . import _readings
from ._readings import Family

__all__ = ["SaTokenCollector", "register"]


class SaTokenCollector(Collector):
    """Reads every live [`TokenSource`][sa_token.TokenSource], [`CABundle`][sa_token.CABundle]
    and exchanged credential when scraped (see [`register`][sa_token.metrics.register])."""

    def describe(self) -> Iterator[Metric]:
        return iter(_families().values())

    def collect(self) -> Iterator[Metric]:
        fams = _families()
        # Each family's add_sample, bound to its sample name (a counter's ends in _total).
        add = {
            f: functools.partial(m.add_sample, m.name + "_total" if f.kind == "counter" else m.name)
            for f, m in fams.items()
        }
        expiry, due, reload = add[_readings.EXPIRY], add[_readings.ROTATION_DUE], add[_readings.LAST_RELOAD]
        reloads, stale, inotify = add[_readings.RELOADS], add[_readings.STALE], add[_readings.WATCH_INOTIFY]
        for s in _readings.token_series():
            labels = {"path": s.path, "audience": s.audience}  # shared by the series' samples
            expiry(labels, s.expiry)
            due(labels, s.rotation_due)
            reload(labels, s.last_reload)
            reloads({**labels, "result": "success"}, float(s.reads))
            reloads({**labels, "result": "failure"}, float(s.failures))
            stale(labels, float(s.stale))
            inotify(labels, float(s.inotify))
        for client, n in _readings.auth_retries().items():
            add[_readings.AUTH_RETRIES]({"client": client}, float(n))
        for c in _readings.credential_series():
            labels = {"kind": c.kind, "path": c.path, "audience": c.audience}
            add[_readings.CREDENTIAL_EXPIRY](labels, c.expiry)
        for b in _readings.ca_series():
            add[_readings.CA_GENERATION]({"path": b.path}, float(b.generation))
            add[_readings.CA_LAST_CHANGE]({"path": b.path}, b.last_change)
        return iter(fams.values())


def _families() -> dict[Family, Metric]:
    """Empty families, in the order of `FAMILIES`."""
    kinds = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily}
    return {f: kinds[f.kind](f.name, f.help, labels=f.labels) for f in _readings.FAMILIES}


_LOCK = threading.Lock()


def _after_fork_in_child() -> None:  # the lock may have been held by a thread that is gone
    global _LOCK  # noqa: PLW0603
    _LOCK = threading.Lock()


at_fork_in_child(_after_fork_in_child)
_COLLECTORS: weakref.WeakKeyDictionary[CollectorRegistry, SaTokenCollector] = weakref.WeakKeyDictionary()


def register(registry: Optional[CollectorRegistry] = None) -> SaTokenCollector:
    """Export sa-token's metrics through ``registry`` (default: `prometheus_client.REGISTRY`).

    One collector reads every live [`TokenSource`][sa_token.TokenSource],
    [`CABundle`][sa_token.CABundle] and exchanged credential when the registry is scraped, so
    sources created later are included and closed ones disappear; nothing runs on the request
    path. Idempotent: registering again with the same registry returns the same collector.

    ```python
    from prometheus_client import start_http_server
    from sa_token.metrics import register

    register()
    start_http_server(9100)
    ```

    Args:
        registry: The registry to register with.

    Returns:
        The collector (`registry.unregister(collector)` removes it).

    Raises:
        ValueError: The registry already has other metrics with these names.
    """
    reg = REGISTRY if registry is None else registry
    with _LOCK:
        collector = _COLLECTORS.get(reg)
        if collector is None:
            collector = SaTokenCollector()
            reg.register(collector)
            _COLLECTORS[reg] = collector
            return collector
        try:  # it may have been unregistered meanwhile: then this registers it again
            reg.register(collector)
        except ValueError:  # still registered: its own names are the duplicates
            pass
        return collector

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
    from prometheus_client.samples import Sample
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
        # Samples built here and appended directly: a scrape of a thousand files makes
        # thousands, and a call of add_sample for each would be a third of the scrape's cost.
        n = {f: m.name + "_total" if f.kind == "counter" else m.name for f, m in fams.items()}
        _token_samples(fams, n)
        _other_samples(fams, n)
        return iter(fams.values())


def _token_samples(fams: dict[Family, Metric], n: dict[Family, str]) -> None:
    rows = [(_token_labels(s.path, s.audience), s) for s in _readings.token_series()]
    r = _readings
    fams[r.EXPIRY].samples += [Sample(n[r.EXPIRY], ls[0], s.expiry) for ls, s in rows]
    fams[r.ROTATION_DUE].samples += [Sample(n[r.ROTATION_DUE], ls[0], s.rotation_due) for ls, s in rows]
    fams[r.LAST_RELOAD].samples += [Sample(n[r.LAST_RELOAD], ls[0], s.last_reload) for ls, s in rows]
    fams[r.RELOADS].samples += [
        Sample(n[r.RELOADS], labels, float(count))
        for ls, s in rows
        for labels, count in ((ls[1], s.reads), (ls[2], s.failures))
    ]
    fams[r.STALE].samples += [Sample(n[r.STALE], ls[0], float(s.stale)) for ls, s in rows]
    fams[r.WATCH_INOTIFY].samples += [
        Sample(n[r.WATCH_INOTIFY], ls[0], float(s.inotify)) for ls, s in rows
    ]


def _other_samples(fams: dict[Family, Metric], n: dict[Family, str]) -> None:
    r = _readings
    for client, count in r.auth_retries().items():
        fams[r.AUTH_RETRIES].add_sample(n[r.AUTH_RETRIES], {"client": client}, float(count))
    for c in r.credential_series():
        labels = {"kind": c.kind, **_token_labels(c.path, c.audience)[0]}
        fams[r.CREDENTIAL_EXPIRY].add_sample(n[r.CREDENTIAL_EXPIRY], labels, c.expiry)
    for fam in r.EVENT_FAMILIES:
        for labels, count in r.events(fam):
            fams[fam].add_sample(n[fam], labels, float(count))
    for b in r.ca_series():
        fams[r.CA_GENERATION].add_sample(n[r.CA_GENERATION], {"path": b.path}, float(b.generation))
        fams[r.CA_LAST_CHANGE].add_sample(n[r.CA_LAST_CHANGE], {"path": b.path}, b.last_change)


@functools.lru_cache(maxsize=4096)  # one entry per series, as _readings' own label cache
def _token_labels(path: str, audience: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """A token series' label sets: its own, and with result="success" / "failure"."""
    labels = {"path": path, "audience": audience}
    return labels, {**labels, "result": "success"}, {**labels, "result": "failure"}


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

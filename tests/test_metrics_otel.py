"""`sa_token.metrics.otel.instrument`: collected through the OpenTelemetry SDK's in-memory
reader, against real projected volumes rotated as the kubelet does."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Gauge, InMemoryMetricReader, Sum

from conftest import FakeClock, wait_for
from sa_token import CABundle, TokenSource, _observe
from sa_token.metrics import _readings
from sa_token.metrics.otel import instrument
from sa_token.testing import Kubelet, ProjectedVolume, assert_no_token

AUD = "sa-token-test"
Points = dict[tuple[tuple[str, Any], ...], float]


# Counters of the whole process (they never disappear): retries, and the receiving side's.
PROCESS_COUNTERS = {
    "sa_token_auth_retries", "sa_token_verifications", "sa_token_jwks_fetches", "sa_token_token_reviews",
    "sa_token_verify_cache_hits",
}



class Reader:
    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.kinds: dict[str, str] = {}
        self.units: dict[str, str] = {}

    def collect(self, under: Path) -> dict[str, Points]:
        """``{instrument: {sorted attributes: value}}`` for the points under ``under`` (and those
        without a path)."""
        out: dict[str, Points] = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                if sm.scope.name != "sa_token":  # some SDK versions report on themselves
                    continue
                for m in sm.metrics:
                    self.units[m.name] = m.unit or ""
                    if isinstance(m.data, Sum):
                        assert m.data.is_monotonic
                        self.kinds[m.name] = "counter"
                    else:
                        assert isinstance(m.data, Gauge)
                        self.kinds[m.name] = "gauge"
                    points = out.setdefault(m.name, {})
                    for dp in m.data.data_points:
                        attrs = dict(dp.attributes or {})
                        if "path" in attrs and not str(attrs["path"]).startswith(str(under)):
                            continue
                        points[tuple(sorted(attrs.items()))] = dp.value
        return out


@pytest.fixture
def otel() -> Iterator[Reader]:
    r = Reader()
    instrument(meter_provider=r.provider)
    yield r
    r.provider.shutdown()


def key(**kw: str) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(kw.items()))


def exp_of(token: str) -> float:
    import jwt

    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


def test_instruments_follow_a_rotation_and_a_closed_source_disappears(
    otel: Reader, kubelet: Kubelet, projected_volume: ProjectedVolume, tmp_path: Path
) -> None:
    first = kubelet.current
    assert first is not None
    path = str(projected_volume.token_path)
    k = key(path=path, audience=AUD)
    clock = FakeClock()  # whole seconds: exact through a datetime
    src = TokenSource(path, audience=AUD, clock=clock)
    m = otel.collect(tmp_path)
    assert m["sa_token_expiry_timestamp_seconds"] == {k: exp_of(first)}
    assert m["sa_token_rotation_due_timestamp_seconds"] == {k: exp_of(first) - 720}
    assert m["sa_token_last_reload_timestamp_seconds"] == {k: clock.now}
    assert m["sa_token_reloads"] == {
        key(path=path, audience=AUD, result="success"): 1,
        key(path=path, audience=AUD, result="failure"): 0,
    }
    assert m["sa_token_stale"] == {k: 0}
    assert m["sa_token_watch_inotify"] == {k: 1 if src.watching else 0}

    clock.advance(3000)
    assert otel.collect(tmp_path)["sa_token_stale"] == {k: 1}
    second = kubelet.rotate(expiration_seconds=7200)
    assert wait_for(lambda: src.status().reads == 2)
    m = otel.collect(tmp_path)
    assert m["sa_token_expiry_timestamp_seconds"] == {k: exp_of(second)}
    assert m["sa_token_stale"] == {k: 0}
    assert m["sa_token_reloads"][key(path=path, audience=AUD, result="success")] == 2
    assert_no_token(repr(m), [first, second], what="the collected points")

    src.close()
    m = otel.collect(tmp_path)
    assert all(not points for name, points in m.items() if name not in PROCESS_COUNTERS), m


def test_instruments_have_the_prometheus_names_kinds_and_units(
    otel: Reader, kubelet: Kubelet, projected_volume: ProjectedVolume, tmp_path: Path
) -> None:
    trustme = pytest.importorskip("trustme")
    vol = ProjectedVolume(tmp_path / "ca")
    vol.write({"ca.crt": trustme.CA().cert_pem.bytes()})
    cred = Credential(str(projected_volume.token_path), time.time() + 600)
    _observe.track_credential(cred)
    _observe.count_auth_retry("otel-test")
    for family in _readings.EVENT_FAMILIES:  # an instrument without observations is not exported
        _observe.count_event(family.name, ("otel-test",) * len(family.labels))
    with TokenSource(projected_volume.token_path), CABundle(vol.path("ca.crt"), watch=False) as ca:
        m = otel.collect(tmp_path)
    assert otel.kinds == {
        "sa_token_expiry_timestamp_seconds": "gauge",
        "sa_token_rotation_due_timestamp_seconds": "gauge",
        "sa_token_last_reload_timestamp_seconds": "gauge",
        "sa_token_reloads": "counter",
        "sa_token_stale": "gauge",
        "sa_token_watch_inotify": "gauge",
        "sa_token_auth_retries": "counter",
        "sa_token_credential_expiry_timestamp_seconds": "gauge",
        "sa_token_ca_generation": "gauge",
        "sa_token_ca_last_change_timestamp_seconds": "gauge",
        # the receiving side (sa_token.verify), process-wide counters
        "sa_token_verifications": "counter",
        "sa_token_jwks_fetches": "counter",
        "sa_token_token_reviews": "counter",
        "sa_token_verify_cache_hits": "counter",
    }
    assert {n for n, u in otel.units.items() if u == "s"} == {
        n for n in otel.kinds if n.endswith("_timestamp_seconds")
    }
    assert m["sa_token_credential_expiry_timestamp_seconds"] == {
        key(kind="vault", path=cred.credential_source_path, audience="vault"): pytest.approx(cred.expires)
    }
    assert m["sa_token_auth_retries"][key(client="otel-test")] >= 1
    assert m["sa_token_ca_generation"] == {key(path=ca.path): 1}


class Credential:
    credential_kind = "vault"
    credential_audience = "vault"

    def __init__(self, path: str, expires: float) -> None:
        self.credential_source_path = path
        self.expires = expires

    def credential_expires_at(self) -> float:
        return self.expires


def test_instrument_is_idempotent_per_provider(
    kubelet: Kubelet, projected_volume: ProjectedVolume, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = Reader()
    caplog.set_level(logging.WARNING, logger="opentelemetry")
    meters: list[str] = []
    get_meter = r.provider.get_meter

    def counting(name: str, *args: Any, **kwargs: Any) -> Any:
        meters.append(name)
        return get_meter(name, *args, **kwargs)

    r.provider.get_meter = counting  # type: ignore[method-assign]
    instrument(meter_provider=r.provider)
    instrument(meter_provider=r.provider)  # no second set of instruments, no warning
    # (recent SDKs also drop an identical second instrument; older ones and other APIs may not)
    assert meters == ["sa_token"]
    with TokenSource(projected_volume.token_path, audience=AUD):
        m = r.collect(tmp_path)
    assert len(m["sa_token_expiry_timestamp_seconds"]) == 1
    assert not [rec for rec in caplog.records if rec.name.startswith("opentelemetry")]
    r.provider.shutdown()
    del r
    gc.collect()


def test_instrument_defaults_to_the_global_provider(
    monkeypatch: pytest.MonkeyPatch, kubelet: Kubelet, projected_volume: ProjectedVolume, tmp_path: Path
) -> None:
    from opentelemetry import metrics

    r = Reader()
    monkeypatch.setattr(metrics, "get_meter_provider", lambda: r.provider)
    instrument()
    with TokenSource(projected_volume.token_path, audience=AUD) as src:
        m = r.collect(tmp_path)
    assert m["sa_token_stale"] == {key(path=src.path, audience=AUD): 0}
    r.provider.shutdown()

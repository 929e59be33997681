"""`sa_token.metrics.register`: scraped from a real prometheus_client HTTP exposition on
127.0.0.1 and parsed with prometheus_client's own parser, against real projected volumes
rotated as the kubelet does."""

from __future__ import annotations

import gc
import math
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry, start_http_server  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from conftest import FakeClock, OpenCounter, wait_for  # noqa: E402
from sa_token import CABundle, TokenSource, _observe  # noqa: E402
from sa_token.metrics import SaTokenCollector, register  # noqa: E402
from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer, assert_no_token  # noqa: E402

AUD = "sa-token-test"  # the kubelet fixture's audience
Series = dict[tuple[tuple[str, str], ...], float]


# Counters of the whole process (they never disappear): retries, and the receiving side's.
PROCESS_COUNTERS = {
    "sa_token_auth_retries", "sa_token_verifications", "sa_token_jwks_fetches", "sa_token_token_reviews",
    "sa_token_verify_cache_hits",
}



class Exposition:
    """A registry with sa-token's collector, served over HTTP on 127.0.0.1."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.collector = register(self.registry)
        self.server, self.thread = start_http_server(0, addr="127.0.0.1", registry=self.registry)
        self.url = f"http://127.0.0.1:{self.server.server_port}/metrics"
        self.text = ""

    def scrape(self, under: Optional[Path] = None) -> dict[str, Series]:
        """``{family: {sorted labels: value}}``, keeping series whose ``path`` is under ``under``
        (other tests' sources may still be alive in this process) and those without a path."""
        with urllib.request.urlopen(self.url, timeout=10) as resp:
            self.text = resp.read().decode()
        out: dict[str, Series] = {}
        for family in text_string_to_metric_families(self.text):
            if not family.name.startswith("sa_token_"):
                continue
            series = out.setdefault(family.name, {})
            for s in family.samples:
                path = s.labels.get("path")
                if under is not None and path is not None and not path.startswith(str(under)):
                    continue
                series[tuple(sorted(s.labels.items()))] = s.value
        return out

    def types(self) -> dict[str, str]:
        self.scrape()
        return {
            f.name: f.type
            for f in text_string_to_metric_families(self.text)
            if f.name.startswith("sa_token_")
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def exposition() -> Iterator[Exposition]:
    """One server for the module (its shutdown waits for a half-second poll); each test looks
    at the series under its own ``tmp_path``."""
    e = Exposition()
    yield e
    e.close()


def labels(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def exp_of(token: str) -> float:
    import jwt

    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


# ----------------------------------------------------------------------- the families -----
def test_the_families_are_the_issues_names_and_types(exposition: Exposition) -> None:
    assert exposition.types() == {
        "sa_token_expiry_timestamp_seconds": "gauge",
        "sa_token_rotation_due_timestamp_seconds": "gauge",
        "sa_token_last_reload_timestamp_seconds": "gauge",
        "sa_token_reloads": "counter",  # exposed as sa_token_reloads_total
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
    assert "# TYPE sa_token_reloads_total counter" in exposition.text


def test_values_follow_a_rotation(
    exposition: Exposition, kubelet: Kubelet, projected_volume: ProjectedVolume, tmp_path: Path
) -> None:
    first = kubelet.current
    assert first is not None
    path = str(projected_volume.token_path)
    with TokenSource(path, audience=AUD) as src:
        before = time.time()
        m = exposition.scrape(tmp_path)
        key = labels(path=path, audience=AUD)
        assert m["sa_token_expiry_timestamp_seconds"] == {key: exp_of(first)}
        # the kubelet rotates at 80% of the lifetime (3600 s)
        assert m["sa_token_rotation_due_timestamp_seconds"][key] == exp_of(first) - 720
        assert before - 5 < m["sa_token_last_reload_timestamp_seconds"][key] <= before
        assert m["sa_token_reloads"] == {
            labels(path=path, audience=AUD, result="success"): 1.0,
            labels(path=path, audience=AUD, result="failure"): 0.0,
        }
        assert m["sa_token_stale"] == {key: 0.0}
        assert m["sa_token_watch_inotify"] == {key: 1.0 if src.watching else 0.0}

        second = kubelet.rotate(expiration_seconds=7200)
        assert wait_for(lambda: src.status().reads >= 2)
        m = exposition.scrape(tmp_path)
        assert m["sa_token_expiry_timestamp_seconds"] == {key: exp_of(second)}
        assert m["sa_token_rotation_due_timestamp_seconds"][key] == exp_of(second) - 1440
        assert m["sa_token_reloads"][labels(path=path, audience=AUD, result="success")] >= 2
        assert m["sa_token_last_reload_timestamp_seconds"][key] >= before
        assert_no_token(exposition.text, [first, second], what="the exposition")


def test_failed_reads_are_counted_and_the_last_good_token_is_reported(
    exposition: Exposition, kubelet: Kubelet, projected_volume: ProjectedVolume, tmp_path: Path
) -> None:
    good = kubelet.current
    assert good is not None
    path = str(projected_volume.token_path)
    with TokenSource(path, audience=AUD, watch=False) as src:
        read_at = exposition.scrape(tmp_path)["sa_token_last_reload_timestamp_seconds"]
        projected_volume.rotate("not a token")
        with pytest.raises(ValueError, match="not a JWT"):
            src.reload()
        with pytest.raises(ValueError, match="not a JWT"):
            src.reload()
        m = exposition.scrape(tmp_path)
        key = labels(path=path, audience=AUD)
        assert m["sa_token_reloads"] == {
            labels(path=path, audience=AUD, result="success"): 1.0,
            labels(path=path, audience=AUD, result="failure"): 2.0,
        }
        assert m["sa_token_expiry_timestamp_seconds"] == {key: exp_of(good)}  # still the good one
        assert m["sa_token_last_reload_timestamp_seconds"] == read_at  # no successful read since
        assert src.status().last_error is not None and "not a JWT" in src.status().last_error


def test_staleness_with_an_injected_clock(
    exposition: Exposition, kubelet: Kubelet, projected_volume: ProjectedVolume, tmp_path: Path
) -> None:
    clock = FakeClock(time.time())
    path = str(projected_volume.token_path)
    key = labels(path=path, audience=AUD)
    with TokenSource(path, audience=AUD, clock=clock) as src:
        assert exposition.scrape(tmp_path)["sa_token_stale"] == {key: 0.0}
        clock.advance(2880 + 60)  # past the rotation point, within the kubelet's margin
        assert exposition.scrape(tmp_path)["sa_token_stale"] == {key: 0.0}
        clock.advance(60)  # the kubelet is now late: stale
        assert exposition.scrape(tmp_path)["sa_token_stale"] == {key: 1.0}
        kubelet.rotate(expiration_seconds=7200)  # rotated at last (its rotation point is far)
        assert wait_for(lambda: not src.status().stale)
        assert exposition.scrape(tmp_path)["sa_token_stale"] == {key: 0.0}


def test_closed_and_dropped_sources_disappear(
    exposition: Exposition, kubelet: Kubelet, projected_volume: ProjectedVolume, tmp_path: Path
) -> None:
    path = str(projected_volume.token_path)
    a = TokenSource(path, audience=AUD)
    b = TokenSource(path)  # any audience: another series
    assert set(exposition.scrape(tmp_path)["sa_token_expiry_timestamp_seconds"]) == {
        labels(path=path, audience=AUD),
        labels(path=path, audience=""),
    }
    a.close()
    assert set(exposition.scrape(tmp_path)["sa_token_expiry_timestamp_seconds"]) == {
        labels(path=path, audience="")
    }
    del b  # dropped without close(): gone once collected
    gc.collect()
    m = exposition.scrape(tmp_path)
    assert all(not series for name, series in m.items() if name not in PROCESS_COUNTERS), m


def test_sources_on_one_file_and_audience_are_one_series(
    exposition: Exposition,
    kubelet: Kubelet,
    projected_volume: ProjectedVolume,
    tmp_path: Path,
    token_issuer: TokenIssuer,
) -> None:
    path = str(projected_volume.token_path)
    clock = FakeClock(time.time())
    with TokenSource(path, audience=AUD, watch=False) as old:
        old.reload()
        old.reload()  # 3 reads
        with (
            TokenSource(path, audience=AUD, clock=clock) as young,  # 1 read, its own clock
            TokenSource(path, audience=[AUD, "other"]) as two,
        ):
            clock.advance(3000)  # young's clock says stale
            m = exposition.scrape(tmp_path)
            key = labels(path=path, audience=AUD)
            assert m["sa_token_stale"] == {key: 1.0, labels(path=path, audience=f"{AUD},other"): 0.0}
            success = m["sa_token_reloads"]
            # the counts of the longest-lived source: it saw every read the others saw
            assert success[labels(path=path, audience=AUD, result="success")] == old.status().reads >= 3
            assert old.status().reads > young.status().reads
            assert two.status().reads >= 1
            assert len(m["sa_token_expiry_timestamp_seconds"]) == 2


def test_a_token_that_never_expires(
    exposition: Exposition, projected_volume: ProjectedVolume, token_issuer: TokenIssuer, tmp_path: Path
) -> None:
    claims = token_issuer.claims(audiences=[AUD])
    del claims["exp"]  # a legacy Secret-based token
    projected_volume.write({"token": token_issuer.sign(claims)})
    with TokenSource(projected_volume.token_path) as src:
        m = exposition.scrape(tmp_path)
        key = labels(path=src.path, audience="")
        assert m["sa_token_expiry_timestamp_seconds"][key] == math.inf
        assert m["sa_token_rotation_due_timestamp_seconds"][key] == math.inf


def test_labels_never_hold_a_token_or_a_control_character(
    exposition: Exposition, kubelet: Kubelet, tmp_path: Path, token_issuer: TokenIssuer
) -> None:
    weird = ProjectedVolume(tmp_path / "dir\x1b[2J")
    token = token_issuer.issue(audiences=["a\nb"])
    weird.write({"token": token})
    cred = FakeCredential("vault", str(weird.token_path), token, time.time() + 60)  # a buggy integration
    _observe.track_credential(cred)
    with TokenSource(weird.token_path, audience="a\nb"):
        m = exposition.scrape(tmp_path)
    shown = str(tmp_path / "dir\\x1b[2J" / "token")
    assert labels(path=shown, audience="a\\x0ab") in m["sa_token_expiry_timestamp_seconds"]
    assert (
        labels(kind="vault", path=shown, audience="<a token>")
        in m["sa_token_credential_expiry_timestamp_seconds"]
    )
    assert "\x1b" not in exposition.text
    assert_no_token(exposition.text, [token, kubelet.current], what="the exposition")


# ----------------------------------------------------------------------- other objects ----
class FakeCredential:
    """What the Vault and cloud integrations will implement (`ExchangedCredential`)."""

    def __init__(self, kind: str, path: Optional[str], audience: Optional[str], expires: Any) -> None:
        self.credential_kind = kind
        self.credential_source_path = path
        self.credential_audience = audience
        self.expires = expires

    def credential_expires_at(self) -> Optional[float]:
        if isinstance(self.expires, Exception):
            raise self.expires
        return self.expires  # type: ignore[no-any-return]


def test_exchanged_credentials_report_their_earliest_expiry(exposition: Exposition, tmp_path: Path) -> None:
    path = str(tmp_path / "vault-token")
    now = time.time()
    creds = [
        FakeCredential("vault", path, "vault", now + 600),
        FakeCredential("vault", path, "vault", now + 300),  # the same key: the earliest wins
        FakeCredential("aws", path, "sts.amazonaws.com", now + 3600),
        FakeCredential("azure", path, "api://AzureADTokenExchange", None),  # holds none now
        FakeCredential("google", path, "gcp", RuntimeError("boom")),  # a bug: left out
    ]
    assert all(isinstance(c, _observe.ExchangedCredential) for c in creds)
    for c in creds:
        _observe.track_credential(c)
    m = exposition.scrape(tmp_path)["sa_token_credential_expiry_timestamp_seconds"]
    assert m == {
        labels(kind="vault", path=path, audience="vault"): pytest.approx(now + 300),
        labels(kind="aws", path=path, audience="sts.amazonaws.com"): pytest.approx(now + 3600),
    }
    creds[1].expires = now + 900  # renewed
    m = exposition.scrape(tmp_path)["sa_token_credential_expiry_timestamp_seconds"]
    assert m[labels(kind="vault", path=path, audience="vault")] == pytest.approx(now + 600)
    del creds, c  # held weakly: a dropped credential disappears
    gc.collect()
    assert exposition.scrape(tmp_path)["sa_token_credential_expiry_timestamp_seconds"] == {}


def test_auth_retries_by_client(exposition: Exposition) -> None:
    key = labels(client="metrics-test")
    assert key not in exposition.scrape()["sa_token_auth_retries"]
    _observe.count_auth_retry("metrics-test")
    _observe.count_auth_retry("metrics-test")
    assert exposition.scrape()["sa_token_auth_retries"][key] == 2.0


def test_ca_bundle_generation_and_last_change(exposition: Exposition, tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    vol = ProjectedVolume(tmp_path / "ca")
    vol.write({"ca.crt": trustme.CA().cert_pem.bytes()})
    clock = FakeClock(1_800_000_000.0)
    bundle = CABundle(vol.path("ca.crt"), watch=False, clock=clock)
    key = labels(path=bundle.path)
    m = exposition.scrape(tmp_path)
    assert m["sa_token_ca_generation"] == {key: 1.0}
    assert m["sa_token_ca_last_change_timestamp_seconds"] == {key: 1_800_000_000.0}
    clock.advance(100)
    vol.write({"ca.crt": trustme.CA().cert_pem.bytes()})
    assert bundle.refresh()
    m = exposition.scrape(tmp_path)
    assert m["sa_token_ca_generation"] == {key: 2.0}
    assert m["sa_token_ca_last_change_timestamp_seconds"] == {key: 1_800_000_100.0}
    clock.advance(100)
    assert not bundle.refresh()  # unchanged: no new generation, no new change time
    assert exposition.scrape(tmp_path)["sa_token_ca_last_change_timestamp_seconds"] == {key: 1_800_000_100.0}
    bundle.close()
    assert exposition.scrape(tmp_path)["sa_token_ca_generation"] == {}


# ----------------------------------------------------------------------- registration -----
def test_register_is_idempotent_per_registry() -> None:
    reg = CollectorRegistry()
    c = register(reg)
    assert isinstance(c, SaTokenCollector)
    assert register(reg) is c  # no "Duplicated timeseries" error
    other = CollectorRegistry()
    assert register(other) is not c
    reg.unregister(c)
    assert reg.get_sample_value("sa_token_auth_retries_total", {"client": "x"}) is None
    assert register(reg) is c  # registered again
    assert "sa_token_reloads_total" in prometheus_client.generate_latest(reg).decode()


def test_register_defaults_to_the_global_registry() -> None:
    c = register()
    try:
        assert register() is c
        assert "# TYPE sa_token_stale gauge" in prometheus_client.generate_latest().decode()
    finally:
        prometheus_client.REGISTRY.unregister(c)


def test_register_refuses_a_registry_with_other_metrics_of_these_names() -> None:
    reg = CollectorRegistry()
    prometheus_client.Gauge("sa_token_stale", "someone else's", registry=reg)
    with pytest.raises(ValueError, match="Duplicated"):
        register(reg)


def test_a_scrape_reads_no_file_and_token_is_unchanged(
    exposition: Exposition,
    kubelet: Kubelet,
    projected_volume: ProjectedVolume,
    tmp_path: Path,
    count_opens: Callable[[object], OpenCounter],
) -> None:
    with TokenSource(projected_volume.token_path, audience=AUD) as src:
        opens = count_opens(projected_volume.token_path)
        exposition.scrape(tmp_path)
        exposition.scrape(tmp_path)
        assert opens.count == 0  # status(): no I/O
        # token() runs exactly the same Python code with the collector registered: nothing is
        # added on the request path (no hook, no wrapper, no counter).
        assert TokenSource.token is _TOKEN_AT_IMPORT
        assert _calls_made_by(src.token) == _calls_made_by(src.token)
        registered = _calls_made_by(src.token)
        exposition.registry.unregister(exposition.collector)
        assert _calls_made_by(src.token) == registered == []


_TOKEN_AT_IMPORT = TokenSource.token


def _calls_made_by(fn: Callable[[], object]) -> list[str]:
    """The Python functions ``fn`` calls (not ``fn`` itself)."""
    calls: list[str] = []

    def profile(frame: Any, event: str, _arg: object) -> None:
        if event == "call" and frame.f_code is not code:
            calls.append(frame.f_code.co_qualname if sys.version_info >= (3, 11) else frame.f_code.co_name)

    code = fn.__func__.__code__  # type: ignore[attr-defined]
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


# ----------------------------------------------------------------------- collapsing -------
@pytest.mark.parametrize("reverse", [False, True], ids=["in-order", "reversed"])
def test_collapsing_does_not_depend_on_the_order_objects_are_found(
    reverse: bool,
    monkeypatch: pytest.MonkeyPatch,
    kubelet: Kubelet,
    projected_volume: ProjectedVolume,
    tmp_path: Path,
) -> None:
    from sa_token.metrics import _readings

    trustme = pytest.importorskip("trustme")

    def ordered(items: list[Any]) -> list[Any]:
        return items[::-1] if reverse else items

    path = str(projected_volume.token_path)
    clock = FakeClock(time.time())
    with TokenSource(path, audience=AUD, watch=False) as old:
        old.reload()  # before young exists: 2 reads against 1
        young = TokenSource(path, audience=AUD, clock=clock)
        clock.advance(3000)  # young says stale
        found = sorted(_readings.live_readings(), key=lambda r: -r.reads)  # old's first
        assert len(found) == 2
        monkeypatch.setattr(_readings, "live_readings", lambda: ordered(found))
        (series,) = _readings.token_series()
        young.close()
    # young's own read (the file had just been written) reached old's view too: old has more
    assert series.stale and series.reads == old.status().reads > young.status().reads

    vol = ProjectedVolume(tmp_path / "ca")
    vol.write({"ca.crt": trustme.CA().cert_pem.bytes()})
    c1, c2 = FakeClock(1_800_000_000.0), FakeClock(1_800_000_000.0)
    with (
        CABundle(vol.path("ca.crt"), watch=False, clock=c1) as a,
        CABundle(vol.path("ca.crt"), watch=False, clock=c2) as b,
    ):
        vol.write({"ca.crt": trustme.CA().cert_pem.bytes()})
        c1.advance(50)
        assert a.refresh()  # a: generation 2 at +50; b: generation 1 at +0
        monkeypatch.setattr(_readings, "live_bundles", lambda: ordered([a, b]))
        (ca,) = _readings.ca_series()
    assert (ca.generation, ca.last_change) == (2, 1_800_000_050.0)

    creds = [FakeCredential("vault", path, "vault", 300.0), FakeCredential("vault", path, "vault", 200.0)]
    monkeypatch.setattr(_observe, "credentials", lambda: ordered(creds))
    assert [c.expiry for c in _readings.credential_series()] == [200.0]


# ----------------------------------------------------------------------- optional packages
@pytest.mark.parametrize(
    ("blocked", "statement", "message"),
    [
        (
            "prometheus_client",
            "from sa_token.metrics import register",
            "sa_token.metrics needs the prometheus-client package: pip install 'sa-token[prometheus]'",
        ),
        (
            "opentelemetry",
            "from sa_token.metrics.otel import instrument",
            "sa_token.metrics.otel needs the opentelemetry-api package: pip install 'sa-token[otel]'",
        ),
    ],
)
def test_a_missing_package_names_the_extra(blocked: str, statement: str, message: str) -> None:
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "import sa_token.metrics\n"  # the package itself imports neither library
        + ("import sa_token.metrics.otel\n" if blocked == "prometheus_client" else "")
        + f"try:\n    {statement}\nexcept ImportError as exc:\n    print(exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == message


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_scrapes_its_sources(
    kubelet: Kubelet, projected_volume: ProjectedVolume, tmp_path: Path
) -> None:
    """gunicorn's preload: the collector registered and the source created in the parent."""
    reg = CollectorRegistry()
    register(reg)
    with TokenSource(projected_volume.token_path, audience=AUD) as src:
        pid = os.fork()
        if pid == 0:  # the child: exit status 0 only if it sees its source rotate
            code = 1
            try:
                assert register(reg) is register(reg)
                second = kubelet.rotate(expiration_seconds=7200)
                labels = {"path": src.path, "audience": AUD}
                # (not "wait for a second read": the child may re-read the old file after the fork)
                seen = wait_for(
                    lambda: reg.get_sample_value("sa_token_expiry_timestamp_seconds", labels) == exp_of(second)
                )
                code = 0 if seen else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0

"""sa_token.azure (sync and aio) driven by azure-identity against the test kit's HTTPS Entra ID
token endpoint (which verifies the assertion's signature, audience and expiry)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError

from _cloud import RecordingKubelet, assert_clean_error, assert_no_token, jti, tracked
from conftest import FakeClock, wait_for
from sa_token import AudienceMismatchError, TokenExpiredError, TokenSource
from sa_token._cloud import ConfigurationError, ExchangeError
from sa_token.azure import AUDIENCE, EntraIDError, WorkloadIdentityCredential, aio
from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer
from sa_token.testing.sts import FakeSTS

TENANT, CLIENT = "72f988bf-0000-0000-0000-000000000000", "5b1e9c2a-0000-0000-0000-000000000000"


def scopes() -> Iterator[str]:
    """A new scope per exchange: azure-identity caches access tokens per scope (and will not ask
    again within 30 s), so a new scope is a new exchange with the token of that moment."""
    n = 0
    while True:
        n += 1
        yield f"https://resource{n}.example/.default"


kubelet = RecordingKubelet.fixture(AUDIENCE)


@pytest.fixture
def sts(
    fake_sts: Callable[..., FakeSTS],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    projected_volume: ProjectedVolume,
) -> FakeSTS:
    server = fake_sts("azure")
    ca = server.write_ca(tmp_path / "ca.pem")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca)  # the sync transport (requests)
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", server.url)  # https only, read at construction
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(projected_volume.token_path))
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    monkeypatch.setenv("AZURE_CLIENT_ID", CLIENT)
    return server


class Flavour:
    """Builds credentials of one flavour (sync or aio) and calls get_token on them; the aio ones
    share one event loop per test (their aiohttp session belongs to it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = asyncio.new_event_loop() if name == "aio" else None
        self.made: list[Any] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.loop is None:
            credential: Any = WorkloadIdentityCredential(*args, **kwargs)
        else:  # aiohttp builds its default SSL context at import: the CA goes in as a transport option
            credential = aio.WorkloadIdentityCredential(
                *args, connection_verify=os.environ["REQUESTS_CA_BUNDLE"], **kwargs
            )
        self.made.append(credential)
        return credential

    def get_token(self, credential: Any, scope: str) -> Any:
        if self.loop is None:
            return credential.get_token(scope)
        return self.loop.run_until_complete(credential.get_token(scope))

    def close(self) -> None:
        if self.loop is not None:
            for credential in self.made:
                self.loop.run_until_complete(credential.close())
            self.loop.close()


@pytest.fixture(params=["sync", "aio"])
def flavour(request: pytest.FixtureRequest) -> Iterator[Flavour]:
    f = Flavour(request.param)
    yield f
    f.close()


def test_each_exchange_presents_the_current_token(
    sts: FakeSTS, kubelet: RecordingKubelet, flavour: Flavour
) -> None:
    credential = flavour()  # everything from the environment
    scope = scopes()
    watcher = TokenSource(kubelet.volume.token_path, audience=AUDIENCE)
    for _ in range(2):
        new = kubelet.rotate()
        assert wait_for(lambda new=new: watcher.token() == new)
        token = flavour.get_token(credential, next(scope))
        call = sts.calls[-1]
        assert call.jti == jti(new) and call.status == 200 and call.path == f"/{TENANT}/oauth2/v2.0/token"
        assert call.params["client_id"] == CLIENT and not call.token_in_url
        # Entra ID answers expires_in; azure-identity adds it to its own clock, read when it sent
        # the request: a second or so before the server read its own (as below).
        assert token.expires_on == pytest.approx(call.expires_at, abs=2)
    n = len(sts.calls)
    flavour.get_token(credential, "https://resource1.example/.default")  # azure-identity's cache answers
    assert len(sts.calls) == n
    (cred,) = [c for c in tracked("azure") if c is credential]
    # The same two clocks as above: a second or so apart.
    assert cred.credential_expires_at() == pytest.approx(sts.calls[-1].expires_at, abs=2)
    assert cred.credential_audience == AUDIENCE
    watcher.close()


def test_get_token_info_is_observed_too(sts: FakeSTS, kubelet: RecordingKubelet) -> None:
    credential = WorkloadIdentityCredential()
    info = credential.get_token_info("https://vault.azure.net/.default")
    assert sts.calls[-1].jti == jti(kubelet.current or "")
    assert credential.credential_expires_at() == info.expires_on


def test_an_expired_token_is_never_sent(
    sts: FakeSTS, kubelet: RecordingKubelet, flavour: Flavour, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    credential = flavour(TokenSource(kubelet.volume.token_path, audience=AUDIENCE, clock=clock))
    scope = scopes()
    flavour.get_token(credential, next(scope))
    clock.advance(3601)  # the kubelet stopped rotating
    with pytest.raises(TokenExpiredError) as info:
        flavour.get_token(credential, next(scope))
    assert len(sts.calls) == 1
    assert_clean_error(info.value, kubelet.tokens)
    assert_no_token(caplog.text, kubelet.tokens)


def test_a_token_the_service_finds_expired_gives_aadsts700024(
    sts: FakeSTS,
    projected_volume: ProjectedVolume,
    token_issuer: TokenIssuer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # This node's clock runs 100 s behind: the token looks valid here, Entra ID sees it expired.
    now = time.time()
    token = Kubelet(projected_volume, token_issuer, audiences=[AUDIENCE]).rotate(
        now=now - 3000, expiration_seconds=2999
    )
    source = TokenSource(projected_volume.token_path, audience=AUDIENCE, clock=lambda: now - 100)
    with pytest.raises(EntraIDError) as info:
        WorkloadIdentityCredential(source).get_token("https://storage.azure.com/.default")
    err = info.value
    assert isinstance(err, ClientAuthenticationError) and isinstance(err, ExchangeError)
    assert (err.code, err.status, err.status_code, err.platform) == ("AADSTS700024", 400, 400, "azure")
    assert err.response is None and err.path == source.path and err.reason == "exchange-rejected"
    # No link to azure-identity's own error and traceback, whose frames hold the assertion.
    assert err.__context__ is None and err.__cause__ is None and err.exc_traceback is None
    assert "not within its valid time range" in str(err)
    assert_clean_error(err, [token])
    assert_no_token(caplog.text, [token])


def test_service_refusal_is_typed(sts: FakeSTS, kubelet: RecordingKubelet, flavour: Flavour) -> None:
    sts.reject("AADSTS70021", "No matching federated identity record found for presented assertion.")
    with pytest.raises(EntraIDError) as info:
        flavour.get_token(flavour(), "https://storage.azure.com/.default")
    assert info.value.code == "AADSTS70021"
    assert_clean_error(info.value, kubelet.tokens)


@pytest.mark.usefixtures("sts")
def test_wrong_audience_fails_at_construction(
    projected_volume: ProjectedVolume, token_issuer: TokenIssuer, flavour: Flavour
) -> None:
    Kubelet(projected_volume, token_issuer, audiences=["sts.amazonaws.com"]).rotate()
    with pytest.raises(AudienceMismatchError, match="api://AzureADTokenExchange"):
        flavour()
    with pytest.raises(AudienceMismatchError, match="api://AzureADTokenExchange"):
        flavour(TokenSource(projected_volume.token_path))


@pytest.mark.usefixtures("sts", "kubelet")
@pytest.mark.parametrize("variable", ["AZURE_FEDERATED_TOKEN_FILE", "AZURE_TENANT_ID", "AZURE_CLIENT_ID"])
def test_a_missing_variable_is_named(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.delenv(variable)
    with pytest.raises(ConfigurationError, match=variable):
        WorkloadIdentityCredential()

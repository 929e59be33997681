"""sa_token.google driven by google-auth's identity-pool credentials against the test kit's
loopback STS (RFC 8693 token exchange; verifies signature, audience and expiry)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from google.auth import exceptions, identity_pool
from google.auth.transport.requests import Request

from _cloud import RecordingKubelet, assert_clean_error, assert_no_token, jti, tracked
from conftest import FakeClock, wait_for
from sa_token import AudienceMismatchError, TokenExpiredError, TokenSource
from sa_token._cloud import ConfigurationError, ExchangeError
from sa_token.google import Credentials, STSError, SubjectTokenSupplier
from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer
from sa_token.testing.sts import AUDIENCES, FakeSTS

PROVIDER = "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/pool/providers/k8s"
AUDIENCE = AUDIENCES["google"]  # "https:" + PROVIDER: the provider's default allowed audience
assert AUDIENCE == "https:" + PROVIDER


kubelet = RecordingKubelet.fixture(AUDIENCE)


@pytest.fixture
def sts(
    fake_sts: Callable[..., FakeSTS],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    projected_volume: ProjectedVolume,
) -> FakeSTS:
    # google-auth accepts an http token_url on the loopback: no TLS needed here.
    server = fake_sts("google", tls=False)
    config = tmp_path / "credential-configuration.json"
    config.write_text(
        json.dumps(
            {
                "type": "external_account",
                "audience": PROVIDER,
                "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                "token_url": f"{server.url}/v1/token",
                "credential_source": {
                    "file": str(projected_volume.token_path),
                    "format": {"type": "text"},
                },
            }
        )
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(config))
    return server


def test_every_refresh_exchanges_the_current_token(sts: FakeSTS, kubelet: RecordingKubelet) -> None:
    supplier = SubjectTokenSupplier()  # configuration, token file and audience from the environment
    assert supplier.audience == AUDIENCE and supplier.source.path == str(kubelet.volume.token_path)
    credentials = supplier.credentials()
    watcher = TokenSource(kubelet.volume.token_path, audience=AUDIENCE)
    for _ in range(2):
        new = kubelet.rotate()
        assert wait_for(lambda new=new: watcher.token() == new)
        credentials.refresh(Request())
        call = sts.calls[-1]
        assert call.jti == jti(new) and call.status == 200 and call.path == "/v1/token"
        assert call.params["audience"] == PROVIDER
        assert call.params["subject_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    assert credentials.valid and credentials.token
    (cred,) = [c for c in tracked("google") if c is credentials]
    assert cred.credential_expires_at() == pytest.approx(sts.calls[-1].expires_at, abs=2)
    assert cred.credential_audience == AUDIENCE
    watcher.close()


def test_the_supplier_plugs_into_plain_google_auth_credentials(
    sts: FakeSTS, kubelet: RecordingKubelet
) -> None:
    credentials = identity_pool.Credentials(
        audience=PROVIDER,
        subject_token_type="urn:ietf:params:oauth:token-type:jwt",
        token_url=f"{sts.url}/v1/token",
        subject_token_supplier=SubjectTokenSupplier(
            TokenSource(kubelet.volume.token_path), audience=AUDIENCE
        ),
    )
    credentials.refresh(Request())
    assert sts.calls[-1].jti == jti(kubelet.current or "") and credentials.valid


def test_an_expired_token_is_never_sent(
    sts: FakeSTS, kubelet: RecordingKubelet, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    credentials = SubjectTokenSupplier(TokenSource(kubelet.volume.token_path, clock=clock)).credentials()
    credentials.refresh(Request())
    clock.advance(3601)  # the kubelet stopped rotating
    with pytest.raises(TokenExpiredError) as info:
        credentials.refresh(Request())
    assert len(sts.calls) == 1
    assert_clean_error(info.value, kubelet.tokens)
    assert_no_token(caplog.text, kubelet.tokens)


def test_sts_refusal_is_typed(
    sts: FakeSTS, kubelet: RecordingKubelet, caplog: pytest.LogCaptureFixture
) -> None:
    credentials = SubjectTokenSupplier().credentials()
    sts.reject("invalid_grant", "The audience in ID Token does not match the expected audience.")
    with pytest.raises(STSError) as info:
        credentials.refresh(Request())
    err = info.value
    assert isinstance(err, exceptions.OAuthError) and isinstance(err, ExchangeError)
    assert (err.code, err.platform, err.path) == ("invalid_grant", "google", str(kubelet.volume.token_path))
    assert "does not match the expected audience" in str(err)
    assert err.__context__ is None  # google-auth's frames (which hold the token) are not attached
    assert_clean_error(err, kubelet.tokens)
    assert_no_token(caplog.text, kubelet.tokens)


def test_the_verifying_sts_refuses_another_audience(
    sts: FakeSTS, projected_volume: ProjectedVolume, token_issuer: TokenIssuer
) -> None:
    Kubelet(projected_volume, token_issuer, audiences=["custom"]).rotate()
    with pytest.raises(STSError) as info:
        SubjectTokenSupplier(audience="custom").credentials().refresh(Request())
    assert info.value.code == "invalid_grant"
    assert isinstance(SubjectTokenSupplier(audience="custom").credentials(), Credentials)


@pytest.mark.usefixtures("sts")
def test_wrong_audience_fails_at_construction(
    projected_volume: ProjectedVolume, token_issuer: TokenIssuer
) -> None:
    Kubelet(projected_volume, token_issuer, audiences=["sts.amazonaws.com"]).rotate()
    with pytest.raises(AudienceMismatchError, match="workloadIdentityPools/pool/providers/k8s"):
        SubjectTokenSupplier()
    with pytest.raises(AudienceMismatchError, match="workloadIdentityPools/pool/providers/k8s"):
        SubjectTokenSupplier(TokenSource(projected_volume.token_path))


def test_a_missing_or_unusable_configuration_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kubelet: RecordingKubelet
) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    with pytest.raises(ConfigurationError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        SubjectTokenSupplier()
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigurationError, match=r"broken\.json"):
        SubjectTokenSupplier(config=str(broken))
    # With a source and an audience no configuration is needed, until credentials() asks for it.
    supplier = SubjectTokenSupplier(TokenSource(kubelet.volume.token_path), audience=AUDIENCE)
    with pytest.raises(ConfigurationError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        supplier.credentials()

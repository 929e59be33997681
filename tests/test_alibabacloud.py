"""sa_token.alibabacloud driven by the SDK's own ``Client`` against the test kit's HTTPS
``AssumeRoleWithOIDC`` fake (which verifies signature, audience and expiry)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from alibabacloud_credentials.client import Client
from alibabacloud_credentials.exceptions import CredentialException

from _cloud import RecordingKubelet, assert_clean_error, assert_no_token, jti, tracked
from conftest import FakeClock, wait_for
from sa_token import AudienceMismatchError, TokenExpiredError, TokenSource
from sa_token._cloud import ConfigurationError, ExchangeError
from sa_token.alibabacloud import AUDIENCE, RRSACredentialsProvider, STSError
from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer
from sa_token.testing.sts import FakeSTS

ROLE = "acs:ram::1234567890:role/app"
PROVIDER = "acs:ram::1234567890:oidc-provider/ack-rrsa-c123"
SHORT = 900  # RAM's shortest session: 15 minutes is the SDK's refresh margin, so every call refreshes


kubelet = RecordingKubelet.fixture(AUDIENCE)


@pytest.fixture
def sts(
    fake_sts: Callable[..., FakeSTS],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    projected_volume: ProjectedVolume,
) -> FakeSTS:
    server = fake_sts("alibabacloud")
    # The SDK trusts certifi plus the system store, which SSL_CERT_FILE replaces; https is hard-coded.
    monkeypatch.setenv("SSL_CERT_FILE", server.write_ca(tmp_path / "ca.pem"))
    monkeypatch.setenv("ALIBABA_CLOUD_OIDC_TOKEN_FILE", str(projected_volume.token_path))
    monkeypatch.setenv("ALIBABA_CLOUD_ROLE_ARN", ROLE)
    monkeypatch.setenv("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", PROVIDER)
    return server


def provider(sts: FakeSTS, source: TokenSource | None = None, **kwargs: object) -> RRSACredentialsProvider:
    # A host name, as the real endpoints are: the Tea SDK checks host names, and with urllib3 1.26
    # (Python 3.9) a certificate check against an IP address fails before any request.
    return RRSACredentialsProvider(source, sts_endpoint=f"localhost:{sts.port}", **kwargs)  # type: ignore[arg-type]


def test_client_gets_credentials_with_the_token_in_the_post_body(
    sts: FakeSTS, kubelet: RecordingKubelet, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DEBUG", "sdk")  # Tea then logs each request's URL (path and query) and headers
    client = Client(provider=provider(sts))  # role, provider and token file from the environment
    cred = client.get_credential()
    assert "AssumeRoleWithOIDC" in caplog.text  # Tea's debug line...
    assert_no_token(caplog.text, kubelet.tokens)  # ...without the token: it went in the body
    assert cred.access_key_id.startswith("STS.") and cred.security_token and cred.type == "oidc_role_arn"
    (call,) = sts.calls
    assert call.status == 200 and call.method == "POST" and not call.token_in_url
    assert call.params["RoleArn"] == ROLE and call.params["OIDCProviderArn"] == PROVIDER
    assert call.params["Action"] == "AssumeRoleWithOIDC"
    client.get_credential()  # cached by the SDK's RefreshCachedSupplier: no second exchange
    assert len(sts.calls) == 1
    (tracked_cred,) = [c for c in tracked("alibabacloud") if c is client.cloud_credential.provider]
    assert tracked_cred.credential_expires_at() == call.expires_at
    assert tracked_cred.credential_audience == AUDIENCE


def test_rotation_is_picked_up_sync_and_async(sts: FakeSTS, kubelet: RecordingKubelet) -> None:
    client = Client(provider=provider(sts, duration_seconds=SHORT))
    watcher = TokenSource(kubelet.volume.token_path, audience=AUDIENCE)
    for fetch in (client.get_credential, lambda: asyncio.run(client.get_credential_async())):
        for _ in range(2):
            new = kubelet.rotate()
            assert wait_for(lambda new=new: watcher.token() == new)
            assert fetch().access_key_id.startswith("STS.")
            assert sts.calls[-1].jti == jti(new) and sts.calls[-1].status == 200
    assert {c.jti for c in sts.calls} <= {jti(t) for t in kubelet.tokens}
    watcher.close()


def test_an_expired_token_is_never_sent(
    sts: FakeSTS, kubelet: RecordingKubelet, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    client = Client(
        provider=provider(
            sts,
            TokenSource(kubelet.volume.token_path, audience=AUDIENCE, clock=clock),
            duration_seconds=SHORT,
        )
    )
    client.get_credential()
    clock.advance(3601)  # the kubelet stopped rotating
    with pytest.raises(TokenExpiredError) as info:
        client.get_credential()
    assert len(sts.calls) == 1
    assert_clean_error(info.value, kubelet.tokens)
    assert_no_token(caplog.text, kubelet.tokens)


@pytest.mark.usefixtures("kubelet")
def test_sts_refusal_is_typed_with_alibabas_code(
    sts: FakeSTS, kubelet: RecordingKubelet, caplog: pytest.LogCaptureFixture
) -> None:
    sts.reject("AuthenticationFail.NoPermission", "There is no permission")
    with pytest.raises(STSError) as info:
        Client(provider=provider(sts)).get_credential()
    err = info.value
    assert isinstance(err, CredentialException) and isinstance(err, ExchangeError)
    assert (err.code, err.status, err.platform) == ("AuthenticationFail.NoPermission", 400, "alibabacloud")
    assert err.request_id and err.path == str(kubelet.volume.token_path)
    assert "There is no permission" in str(err)
    assert_clean_error(err, kubelet.tokens)
    assert_no_token(caplog.text, kubelet.tokens)


def test_the_verifying_sts_refuses_another_audience(
    sts: FakeSTS, projected_volume: ProjectedVolume, token_issuer: TokenIssuer
) -> None:
    Kubelet(projected_volume, token_issuer, audiences=["custom"]).rotate()
    with pytest.raises(STSError) as info:
        Client(provider=provider(sts, audience="custom")).get_credential()
    assert info.value.code == "AuthenticationFail.OIDCToken.AudienceNotMatch"


@pytest.mark.usefixtures("sts")
def test_wrong_audience_fails_at_construction(
    projected_volume: ProjectedVolume, token_issuer: TokenIssuer
) -> None:
    Kubelet(projected_volume, token_issuer, audiences=["sts.amazonaws.com"]).rotate()
    with pytest.raises(AudienceMismatchError, match=r"sts\.aliyuncs\.com"):
        RRSACredentialsProvider()
    with pytest.raises(AudienceMismatchError, match=r"sts\.aliyuncs\.com"):
        RRSACredentialsProvider(TokenSource(projected_volume.token_path))


@pytest.mark.usefixtures("sts", "kubelet")
@pytest.mark.parametrize(
    "variable", ["ALIBABA_CLOUD_OIDC_TOKEN_FILE", "ALIBABA_CLOUD_ROLE_ARN", "ALIBABA_CLOUD_OIDC_PROVIDER_ARN"]
)
def test_a_missing_variable_is_named(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.delenv(variable)
    with pytest.raises(ConfigurationError, match=variable):
        RRSACredentialsProvider()


@pytest.mark.usefixtures("kubelet")
def test_variables_are_read_when_built_not_at_import(sts: FakeSTS, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_ROLE_ARN", "acs:ram::1234567890:role/other")
    monkeypatch.setenv("ALIBABA_CLOUD_STS_REGION", "cn-hangzhou")
    assert RRSACredentialsProvider().sts_endpoint == "sts.cn-hangzhou.aliyuncs.com"
    monkeypatch.setenv("ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED", "true")
    assert RRSACredentialsProvider().sts_endpoint == "sts-vpc.cn-hangzhou.aliyuncs.com"
    monkeypatch.setenv("ALIBABA_CLOUD_STS_ENDPOINT", f"localhost:{sts.port}")
    assert RRSACredentialsProvider().sts_endpoint == f"localhost:{sts.port}"
    Client(provider=provider(sts)).get_credential()
    assert sts.calls[-1].params["RoleArn"] == "acs:ram::1234567890:role/other"
    assert time.time() < (sts.calls[-1].expires_at or 0)

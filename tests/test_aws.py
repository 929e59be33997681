"""sa_token.aws against moto's STS and S3 on 127.0.0.1 (moto does not check the token, so the
tests look at what botocore sent: the ``before-parameter-build`` event), and against the test
kit's verifying STS for refusals."""

from __future__ import annotations

import logging
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from freezegun import freeze_time

from _cloud import RecordingKubelet, assert_clean_error, assert_no_token, jti, tracked
from conftest import FakeClock, wait_for
from sa_token import AudienceMismatchError, TokenExpiredError, TokenSource
from sa_token._cloud import ConfigurationError, ExchangeError
from sa_token.aws import AUDIENCE, STSError, boto3_session
from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer
from sa_token.testing.sts import FakeSTS

moto_server = pytest.importorskip("moto.server")

ROLE = "arn:aws:iam::123456789012:role/app"
EVENT = "before-parameter-build.sts.AssumeRoleWithWebIdentity"
SHORT = 900  # STS's shortest session: inside botocore's 15-minute advisory window, so every call refreshes


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    yield url
    # moto keeps its state in this process, not in the server: the next moto starts empty.
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"))
    server.stop()


kubelet = RecordingKubelet.fixture(AUDIENCE)


@pytest.fixture
def aws_env(
    monkeypatch: pytest.MonkeyPatch, moto: str, projected_volume: ProjectedVolume, tmp_path: Path
) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(projected_volume.token_path))
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE)
    monkeypatch.setenv("AWS_ROLE_SESSION_NAME", "sa-token-test")


def sent_jtis(session: boto3.Session) -> list[str]:
    """The jti of each token botocore puts into an AssumeRoleWithWebIdentity request."""
    seen: list[str] = []
    session.events.register(EVENT, lambda params, **_: seen.append(jti(params["WebIdentityToken"])))
    return seen


@pytest.mark.usefixtures("aws_env")
def test_every_exchange_sends_the_current_token_and_s3_keeps_working(kubelet: RecordingKubelet) -> None:
    session = boto3_session(duration_seconds=SHORT)  # everything from the environment
    sent = sent_jtis(session)
    s3 = session.client("s3")
    s3.create_bucket(Bucket="sa-token-bucket", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    watcher = TokenSource(kubelet.volume.token_path, audience=AUDIENCE)  # to know when the rotation is seen
    for _ in range(3):
        new = kubelet.rotate()
        assert wait_for(lambda new=new: watcher.token() == new)
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["sa-token-bucket"]
        assert sent[-1] == jti(new), "the exchange after a rotation did not send the new token"
    assert set(sent) == {jti(t) for t in kubelet.tokens}
    # The credentials' expiry is visible to the metrics.
    (cred,) = [c for c in tracked("aws") if c.credential_source_path == watcher.path]
    assert cred.credential_audience == AUDIENCE
    expires = cred.credential_expires_at()
    assert expires is not None and abs(expires - (time.time() + SHORT)) < 30
    # Inside the mandatory refresh window (10 min before they expire): refreshed, current token.
    with freeze_time(datetime.now(timezone.utc) + timedelta(seconds=SHORT - 300), tick=True):
        s3.list_buckets()
    assert len(sent) == 5 and sent[-1] == jti(kubelet.current or "")
    assert (cred.credential_expires_at() or 0) - expires > 500
    watcher.close()


@pytest.mark.usefixtures("aws_env")
def test_an_expired_token_is_never_sent(kubelet: RecordingKubelet, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    source = TokenSource(kubelet.volume.token_path, audience=AUDIENCE, clock=clock)
    session = boto3_session(source, duration_seconds=SHORT)
    sent = sent_jtis(session)
    s3 = session.client("s3")
    s3.list_buckets()
    assert len(sent) == 1
    clock.advance(3601)  # the kubelet stopped rotating: the token in the file has expired
    # Advisory window (15 min before the credentials expire): botocore keeps the credentials it
    # holds and logs why it could not refresh; nothing was sent.
    s3.list_buckets()
    assert len(sent) == 1
    assert "TokenExpiredError" in caplog.text
    # Mandatory window (10 min before): the typed error reaches the caller; still nothing sent.
    later = datetime.now(timezone.utc) + timedelta(seconds=SHORT - 300)
    with freeze_time(later, tick=True), pytest.raises(TokenExpiredError) as info:
        s3.list_buckets()
    assert len(sent) == 1
    assert_clean_error(info.value, kubelet.tokens)
    assert_no_token(caplog.text, kubelet.tokens)


@pytest.mark.usefixtures("aws_env")
def test_sts_refusal_is_typed_with_the_aws_code(
    kubelet: RecordingKubelet,
    token_issuer: TokenIssuer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with FakeSTS(token_issuer, platform="aws", tls=False) as sts:
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts.url)  # S3 stays on moto
        session = boto3_session(duration_seconds=SHORT)
        session.client("s3").list_buckets()  # the fake verified the token (signature, audience, expiry)
        assert [c.jti for c in sts.calls] == [jti(kubelet.current or "")]
        sts.reject("AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity")
        with pytest.raises(STSError) as info:
            boto3_session().client("s3").list_buckets()
    err = info.value
    assert isinstance(err, ClientError) and isinstance(err, ExchangeError)
    assert err.code == err.response["Error"]["Code"] == "AccessDenied"
    assert (err.platform, err.status, err.reason) == ("aws", 400, "exchange-rejected")
    assert err.path == str(kubelet.volume.token_path)
    assert err.__context__ is None  # botocore's frames (which hold the token) are not attached
    assert "Not authorized" in str(err) and str(kubelet.volume.token_path) in str(err)
    assert_clean_error(err, kubelet.tokens)
    assert_no_token(caplog.text, kubelet.tokens)


@pytest.mark.usefixtures("aws_env")
def test_the_verifying_sts_refuses_a_token_for_another_audience(
    projected_volume: ProjectedVolume, token_issuer: TokenIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # audience= lets a custom audience through our check; STS then refuses it with its own code.
    Kubelet(projected_volume, token_issuer, audiences=["custom"]).rotate()
    with FakeSTS(token_issuer, platform="aws", tls=False) as sts:
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts.url)
        with pytest.raises(STSError) as info:
            boto3_session(audience="custom").client("s3").list_buckets()
    assert info.value.code == "InvalidIdentityToken" and "audience" in str(info.value)


@pytest.mark.usefixtures("aws_env")
def test_wrong_audience_fails_at_construction(
    projected_volume: ProjectedVolume, token_issuer: TokenIssuer
) -> None:
    Kubelet(projected_volume, token_issuer, audiences=["vault"]).rotate()
    with pytest.raises(AudienceMismatchError, match=r"sts\.amazonaws\.com"):
        boto3_session()  # from the environment
    with pytest.raises(AudienceMismatchError, match=r"sts\.amazonaws\.com"):
        boto3_session(TokenSource(projected_volume.token_path))  # a source that checks no audience


@pytest.mark.usefixtures("aws_env", "kubelet")
@pytest.mark.parametrize("variable", ["AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"])
def test_a_missing_variable_is_named(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.delenv(variable)
    with pytest.raises(ConfigurationError, match=variable):
        boto3_session()


def test_variables_are_read_when_called_not_at_import(
    monkeypatch: pytest.MonkeyPatch, aws_env: None, kubelet: RecordingKubelet
) -> None:
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/other")
    seen: list[str] = []
    session = boto3_session(region_name="eu-west-1")
    session.events.register(EVENT, lambda params, **_: seen.append(params["RoleArn"]))
    session.client("s3").list_buckets()
    assert seen == ["arn:aws:iam::123456789012:role/other"]
    assert session.region_name == "eu-west-1"

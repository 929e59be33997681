"""The cloud examples (examples/aws_s3.py, alibabacloud_rrsa.py, azure_workload_identity.py,
google_wif.py) run as real processes, configured only by the environment a pod would have,
against the test kit's verifying token services (and moto's S3), while a simulated kubelet
rotates the token."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from _cloud import RecordingKubelet, assert_no_token, jti
from sa_token.testing import ProjectedVolume, TokenIssuer
from sa_token.testing.sts import AUDIENCES, FakeSTS

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ROTATE_EVERY = 0.3  # seconds: several rotations while an example runs


@pytest.fixture
def rotating(
    projected_volume: ProjectedVolume, token_issuer: TokenIssuer
) -> Iterator[Callable[[str], RecordingKubelet]]:
    started: list[RecordingKubelet] = []

    def start(platform: str) -> RecordingKubelet:
        k = RecordingKubelet(projected_volume, token_issuer, audiences=[AUDIENCES[platform]])
        k.rotate()
        k.start(every=ROTATE_EVERY)
        started.append(k)
        return k

    yield start
    for k in started:
        k.stop()


def run(name: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ALIBABA_", "AZURE_", "GOOGLE_"))
    }
    clean.pop("REQUESTS_CA_BUNDLE", None)
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=60,
        check=False,
    )


def check(res: subprocess.CompletedProcess[str], sts: FakeSTS, kubelet: RecordingKubelet, calls: int) -> None:
    kubelet.stop()
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(res.stdout.splitlines()) == calls
    assert sts.calls and all(c.status == 200 and not c.token_in_url for c in sts.calls)
    assert {c.jti for c in sts.calls} <= {jti(t) for t in kubelet.tokens}
    assert_no_token(res.stdout + res.stderr, kubelet.tokens)


def test_aws_example(
    rotating: Callable[[str], RecordingKubelet], fake_sts: Callable[..., FakeSTS], tmp_path: Path
) -> None:
    moto_server = pytest.importorskip("moto.server")
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        s3_url = f"http://{host}:{port}"
        # moto keeps its state in this process, not in the server: start from an empty account.
        urllib.request.urlopen(urllib.request.Request(f"{s3_url}/moto-api/reset", method="POST"))
        s3 = boto3.client(
            "s3",
            endpoint_url=s3_url,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
        )
        s3.create_bucket(Bucket="sa-token-example")
        sts = fake_sts("aws", tls=False)
        kubelet = rotating("aws")
        env = {
            "AWS_WEB_IDENTITY_TOKEN_FILE": str(kubelet.volume.token_path),
            "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/app",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": s3_url,
            "AWS_ENDPOINT_URL_STS": sts.url,  # the verifying STS; S3 is moto's
            "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        }
        # 15-minute credentials: botocore refreshes them at every call, with the token of the moment.
        res = run("aws_s3.py", env, "--count", "3", "--interval", "0.4", "--duration-seconds", "900")
    finally:
        moto.stop()
    check(res, sts, kubelet, 3)
    assert res.stdout.splitlines()[0] == "call 1: 1 bucket(s): sa-token-example"
    assert len({c.jti for c in sts.calls}) >= 2, "the example never exchanged a rotated token"


def test_alibabacloud_example(
    rotating: Callable[[str], RecordingKubelet], fake_sts: Callable[..., FakeSTS], tmp_path: Path
) -> None:
    sts = fake_sts("alibabacloud")
    kubelet = rotating("alibabacloud")
    env = {
        "ALIBABA_CLOUD_OIDC_TOKEN_FILE": str(kubelet.volume.token_path),
        "ALIBABA_CLOUD_ROLE_ARN": "acs:ram::1234567890:role/app",
        "ALIBABA_CLOUD_OIDC_PROVIDER_ARN": "acs:ram::1234567890:oidc-provider/ack-rrsa-c123",
        "ALIBABA_CLOUD_STS_ENDPOINT": f"localhost:{sts.port}",  # a host name: see test_alibabacloud
        "SSL_CERT_FILE": sts.write_ca(tmp_path / "ca.pem"),
    }
    res = run("alibabacloud_rrsa.py", env, "--count", "3", "--interval", "0.4", "--duration-seconds", "900")
    check(res, sts, kubelet, 3)
    assert res.stdout.startswith("call 1: oidc_role_arn credentials, valid for 15 more minutes")
    assert len({c.jti for c in sts.calls}) >= 2, "the example never exchanged a rotated token"


def test_azure_example(
    rotating: Callable[[str], RecordingKubelet], fake_sts: Callable[..., FakeSTS], tmp_path: Path
) -> None:
    sts = fake_sts("azure")
    kubelet = rotating("azure")
    env = {
        "AZURE_FEDERATED_TOKEN_FILE": str(kubelet.volume.token_path),
        "AZURE_TENANT_ID": "72f988bf-0000-0000-0000-000000000000",
        "AZURE_CLIENT_ID": "5b1e9c2a-0000-0000-0000-000000000000",
        "AZURE_AUTHORITY_HOST": sts.url,
        "REQUESTS_CA_BUNDLE": sts.write_ca(tmp_path / "ca.pem"),
    }
    res = run("azure_workload_identity.py", env, "--count", "2", "--interval", "0.1")
    check(res, sts, kubelet, 2)
    assert res.stdout.startswith("call 1: access token for https://storage.azure.com/.default, valid for 60")
    assert len(sts.calls) == 1  # azure-identity's cache answered the second call


def test_google_example(
    rotating: Callable[[str], RecordingKubelet], fake_sts: Callable[..., FakeSTS], tmp_path: Path
) -> None:
    sts = fake_sts("google", tls=False)
    kubelet = rotating("google")
    config = tmp_path / "credential-configuration.json"
    config.write_text(
        json.dumps(
            {
                "type": "external_account",
                "audience": AUDIENCES["google"][len("https:") :],
                "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                "token_url": f"{sts.url}/v1/token",
                "credential_source": {"file": str(kubelet.volume.token_path), "format": {"type": "text"}},
            }
        )
    )
    res = run(
        "google_wif.py", {"GOOGLE_APPLICATION_CREDENTIALS": str(config)}, "--count", "2", "--interval", "0.1"
    )
    check(res, sts, kubelet, 2)
    assert res.stdout.startswith("call 1: access token valid for 60 more minutes")


def test_an_example_outside_a_configured_pod_fails_clearly() -> None:
    res = run("azure_workload_identity.py", {}, "--count", "1")
    assert (
        res.returncode == 2 and "AZURE_FEDERATED_TOKEN_FILE" in res.stderr and "Traceback" not in res.stderr
    )


def test_aws_example_with_sts_unreachable(rotating: Callable[[str], RecordingKubelet], tmp_path: Path) -> None:
    """STS refuses connections: one line saying so, exit 1, no traceback."""
    pytest.importorskip("boto3")
    kubelet = rotating("aws")
    env = {
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(kubelet.volume.token_path),
        "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/app",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_STS": "http://127.0.0.1:1",  # nothing listens there
        "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }
    res = run("aws_s3.py", env, "--count", "1")
    kubelet.stop()
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("call 1: ") and "127.0.0.1:1" in line
    assert_no_token(res.stdout + res.stderr, kubelet.tokens)

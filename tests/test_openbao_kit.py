"""The test kit's Vault side: FakeAPIServer's TokenReview endpoint (what Vault's Kubernetes auth
method calls) and OpenBaoServer, a real `bao server -dev` configured for the kit's issuer."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import jwt
import pytest
import requests

from sa_token.testing import TokenIssuer
from sa_token.testing.apiserver import DEFAULT_AUDIENCES, TOKEN_REVIEW_PATH, FakeAPIServer
from sa_token.testing.openbao import OpenBaoServer

hvac = pytest.importorskip("hvac")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # hvac picks up ~/.vault-token and VAULT_TOKEN; the dev server writes ~/.vault-token.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in [n for n in os.environ if n.startswith(("VAULT_", "BAO_"))]:
        monkeypatch.delenv(name)


# Each server's CA file, written by the fixture (as the other modules' `ca_file` fixtures do) and
# held only while the server lives: keyed by the server itself, never by a reusable id() or port.
_CA_FILES: dict[FakeAPIServer, str] = {}


@pytest.fixture
def api(token_issuer: TokenIssuer, tmp_path: Path) -> Iterator[FakeAPIServer]:
    with FakeAPIServer(token_issuer) as server:
        _CA_FILES[server] = server.write_ca(tmp_path / "ca.crt")
        yield server
        del _CA_FILES[server]


def jti_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


def review(api: FakeAPIServer, token: Optional[str], audiences: Optional[list[str]] = None,
           caller: Optional[str] = None) -> requests.Response:
    reviewer = caller or api.issuer.issue(namespace="vault", service_account="vault", pod=None)
    spec: dict[str, Any] = {"token": token}
    if audiences is not None:
        spec["audiences"] = audiences
    # What Vault sends: a TokenReview without kind/apiVersion, authenticated as its reviewer.
    return requests.post(f"{api.url}{TOKEN_REVIEW_PATH}", json={"spec": spec},
                         headers={"Authorization": f"Bearer {reviewer}"}, verify=_ca(api), timeout=5)


def _ca(api: FakeAPIServer) -> str:
    return _CA_FILES[api]


# ----------------------------------------------------------------------- TokenReview -------
def test_a_valid_token_is_authenticated_as_its_service_account(api: FakeAPIServer, token_issuer: TokenIssuer) -> None:
    token = token_issuer.issue(audiences=["vault"], namespace="payments", service_account="payments",
                               pod="payments-api", expiration_seconds=600)
    resp = review(api, token, ["vault"])
    assert resp.status_code == 201
    body = resp.json()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert body["kind"] == "TokenReview" and body["apiVersion"] == "authentication.k8s.io/v1"
    status = body["status"]
    assert status["authenticated"] is True and status["audiences"] == ["vault"]
    assert status["user"]["username"] == "system:serviceaccount:payments:payments"
    assert status["user"]["uid"] == claims["kubernetes.io"]["serviceaccount"]["uid"]  # Vault compares it
    assert "system:serviceaccounts:payments" in status["user"]["groups"]
    assert status["user"]["extra"]["authentication.kubernetes.io/pod-name"] == ["payments-api"]
    assert status["user"]["extra"]["authentication.kubernetes.io/credential-id"] == [f"JTI={claims['jti']}"]
    assert token not in resp.text  # not echoed back (kube-apiserver would; the kit never does)
    (rec,) = api.reviews
    assert (rec.token_jti, rec.audiences, rec.authenticated, rec.error, rec.pod) == (
        claims["jti"], ("vault",), True, None, "payments/payments-api")
    assert token not in repr(api.reviews) and token not in repr(api.requests)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no-audiences", 'token audiences ["vault"] is invalid for the target audiences '
                         f'["{DEFAULT_AUDIENCES[0]}"]'),
        ("other-audience", 'token audiences ["vault"] is invalid for the target audiences ["db" "cache"]'),
        ("expired", "service account token has expired"),
        ("not-yet-valid", "service account token is not valid yet"),
        ("other-issuer", "square/go-jose: error in cryptographic primitive"),
        ("deleted-pod", "service account token has been invalidated"),
    ],
)
def test_review_failures_read_as_kube_apiserver_words_them(
    api: FakeAPIServer, token_issuer: TokenIssuer, case: str, expected: str
) -> None:
    kw: dict[str, Any] = {"audiences": ["vault"], "expiration_seconds": 600, "pod": "app-0"}
    issuer = token_issuer
    audiences: Optional[list[str]] = ["vault"]
    if case == "no-audiences":
        audiences = None  # then the server's own audiences apply
    elif case == "other-audience":
        audiences = ["db", "cache"]
    elif case == "expired":
        kw.update(now=time.time() - 700)
    elif case == "not-yet-valid":
        kw.update(now=time.time() + 600)
    elif case == "other-issuer":
        issuer = TokenIssuer(key_size=1024 * 2)
    elif case == "deleted-pod":
        api.delete_pod("app-0", namespace="default")
    token = issuer.issue(**kw)
    resp = review(api, token, audiences)
    assert resp.status_code == 201
    status = resp.json()["status"]
    assert status["authenticated"] is False and status["user"] == {}
    assert status["error"] == f"[invalid bearer token, {expected}]"
    assert api.reviews[-1].error == expected and api.reviews[-1].token_jti == jti_of(token)


def test_a_deleted_pods_tokens_stop_authenticating_everywhere(api: FakeAPIServer, token_issuer: TokenIssuer) -> None:
    token = token_issuer.issue(expiration_seconds=600, pod="app-1")
    ca = _ca(api)
    get = lambda: requests.get(f"{api.url}/version", headers={"Authorization": f"Bearer {token}"},  # noqa: E731
                               verify=ca, timeout=5)
    assert get().status_code == 200
    api.delete_pod("app-1")
    assert get().status_code == 401 and api.requests[-1].error == "invalidated"
    other = token_issuer.issue(expiration_seconds=600, pod="app-2")
    assert review(api, other, list(DEFAULT_AUDIENCES)).json()["status"]["authenticated"] is True


def test_the_reviewer_itself_must_authenticate(api: FakeAPIServer, token_issuer: TokenIssuer) -> None:
    token = token_issuer.issue(audiences=["vault"], expiration_seconds=600)
    wrong = token_issuer.issue(audiences=["vault"], expiration_seconds=600)  # not an API audience
    resp = review(api, token, ["vault"], caller=wrong)
    assert resp.status_code == 401 and resp.json()["reason"] == "Unauthorized"
    assert api.reviews == []
    assert review(api, None, ["vault"]).status_code == 400
    api.fail_next(1, status=500)  # an API server outage, as Vault would see it
    assert review(api, token, ["vault"]).status_code == 500


# ----------------------------------------------------------------------- OpenBaoServer -----
def test_openbao_logs_in_with_both_methods_and_records_what_it_saw(
    openbao: OpenBaoServer, token_issuer: TokenIssuer, tmp_path: Path
) -> None:
    openbao.add_policy("payments", 'path "secret/data/db" { capabilities = ["read"] }')
    openbao.add_role("payments", namespace="payments", service_account="payments", policies=["payments"])
    openbao.write_secret("db", {"password": "s3cret"})
    token = token_issuer.issue(audiences=["vault"], namespace="payments", service_account="payments",
                               expiration_seconds=600)
    accessors = []
    for method in ("kubernetes", "jwt"):
        client = hvac.Client(url=openbao.url, token="")
        login = client.auth.kubernetes.login if method == "kubernetes" else client.auth.jwt.jwt_login
        auth = login(role="payments", jwt=token)["auth"]
        assert set(auth["policies"]) == {"default", "payments"} and auth["lease_duration"] == 3600
        accessors.append(auth["accessor"])
        data = client.secrets.kv.v2.read_secret_version(path="db", raise_on_deleted_version=True)
        assert data["data"]["data"] == {"password": "s3cret"}
    (rec,) = openbao.apiserver.reviews  # only the Kubernetes method asks the API server
    assert rec.token_jti == jti_of(token) and rec.audiences == ("vault",) and rec.authenticated
    assert openbao.count("auth/kubernetes/login") == 1 and openbao.count("auth/jwt/login") == 1
    reads = [r for r in openbao.audit() if r.path == "secret/data/db" and r.operation == "read"]
    assert [r.accessor for r in reads] == accessors
    assert not (tmp_path / "home" / ".vault-token").exists()  # the dev server used its own HOME


def test_restart_keeps_the_configuration_but_not_the_tokens(openbao: OpenBaoServer, token_issuer: TokenIssuer) -> None:
    openbao.add_role("app", policies=["default"], token_ttl=60)
    token = token_issuer.issue(audiences=["vault"], expiration_seconds=600)
    client = hvac.Client(url=openbao.url, token="")
    client.auth.jwt.jwt_login(role="app", jwt=token)
    assert client.auth.token.lookup_self()["data"]["ttl"] > 0
    openbao.seal()
    with pytest.raises(hvac.exceptions.VaultDown):
        client.auth.token.lookup_self()
    openbao.unseal()
    assert client.auth.token.lookup_self()["data"]["ttl"] > 0  # sealing keeps tokens
    url = openbao.url
    openbao.restart()
    assert openbao.url == url and openbao.starts == 2
    with pytest.raises(hvac.exceptions.Forbidden):
        client.auth.token.lookup_self()  # the token is gone with the old server
    client.auth.jwt.jwt_login(role="app", jwt=token)  # the role is back
    assert client.auth.token.lookup_self()["data"]["ttl"] > 0


def test_the_testing_docs_vault_example_runs(
    openbao: OpenBaoServer, token_issuer: TokenIssuer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    from sa_token.testing import ProjectedVolume

    docs = (Path(__file__).resolve().parent.parent / "docs" / "testing.md").read_text()
    (code,) = re.findall(r"```python\n(from sa_token import TokenSource\nfrom sa_token.testing import Kubelet\n.*?)```",
                         docs, re.S)
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/testing.md", "exec"), namespace)  # our own documentation
    namespace["test_reads_survive_a_revocation"](
        openbao, token_issuer, ProjectedVolume(tmp_path / "sa"), monkeypatch, tmp_path)

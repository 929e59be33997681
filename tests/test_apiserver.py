"""FakeAPIServer authenticates like kube-apiserver: good tokens in, everything else 401."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest
import requests

from sa_token.testing import TokenIssuer
from sa_token.testing.apiserver import FakeAPIServer

AUD = "vault"
UNAUTHORIZED = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": "Unauthorized",
    "reason": "Unauthorized",
    "code": 401,
}


@pytest.fixture
def server(token_issuer: TokenIssuer) -> Iterator[FakeAPIServer]:
    with FakeAPIServer(token_issuer, audiences=[AUD]) as s:
        yield s


@pytest.fixture
def ca_file(server: FakeAPIServer, tmp_path: Path) -> str:
    return server.write_ca(tmp_path / "ca.crt")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_accepts_a_valid_token_and_records_its_jti(
    server: FakeAPIServer, ca_file: str, token_issuer: TokenIssuer
) -> None:
    import jwt

    token = token_issuer.issue(audiences=[AUD], expiration_seconds=600)
    r = requests.get(f"{server.url}/version", headers=bearer(token), verify=ca_file, timeout=5)
    assert r.status_code == 200
    assert r.json()["gitVersion"].startswith("v1.")
    rec = server.requests[-1]
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert (rec.method, rec.path, rec.status, rec.authorized, rec.token_jti, rec.scheme) == (
        "GET",
        "/version",
        200,
        True,
        jti,
        "Bearer",
    )
    assert server.url.startswith("https://127.0.0.1:")


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("expired", "ExpiredSignatureError"),
        ("wrong_aud", "InvalidAudienceError"),
        ("not_yet_valid", "ImmatureSignatureError"),
        ("tampered", "InvalidSignatureError"),
    ],
)
def test_rejects_bad_tokens_with_a_status_body(
    server: FakeAPIServer, ca_file: str, token_issuer: TokenIssuer, case: str, error: str
) -> None:
    now = time.time()
    if case == "expired":
        token = token_issuer.issue(audiences=[AUD], expiration_seconds=600, now=now - 601)
    elif case == "wrong_aud":
        token = token_issuer.issue(audiences=["other"], expiration_seconds=600)
    elif case == "not_yet_valid":
        token = token_issuer.issue(audiences=[AUD], expiration_seconds=600, now=now + 120)
    else:  # a valid token whose payload was altered after signing
        import base64
        import json

        h, p, s = token_issuer.issue(audiences=[AUD], expiration_seconds=600).split(".")
        claims = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
        claims["sub"] = "system:serviceaccount:kube-system:admin"
        p = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        token = f"{h}.{p}.{s}"
    r = requests.get(
        f"{server.url}/api/v1/namespaces/default/pods", headers=bearer(token), verify=ca_file, timeout=5
    )
    assert r.status_code == 401
    assert r.json() == UNAUTHORIZED
    rec = server.requests[-1]
    assert (rec.authorized, rec.status, rec.error) == (False, 401, error)
    assert rec.token_jti is not None  # the rejected token is identifiable, not recorded


def test_rejects_a_token_signed_by_another_key(server: FakeAPIServer, ca_file: str) -> None:
    other = TokenIssuer()  # same issuer name, different key
    token = other.issue(audiences=[AUD], expiration_seconds=600)
    r = requests.get(f"{server.url}/version", headers=bearer(token), verify=ca_file, timeout=5)
    assert r.status_code == 401
    assert server.requests[-1].error == "InvalidSignatureError"


def test_rejects_missing_or_non_bearer_authorization(
    server: FakeAPIServer, ca_file: str, token_issuer: TokenIssuer
) -> None:
    token = token_issuer.issue(audiences=[AUD], expiration_seconds=600)
    assert requests.get(f"{server.url}/version", verify=ca_file, timeout=5).status_code == 401
    assert server.requests[-1].error == "missing"
    r = requests.get(
        f"{server.url}/version", headers={"Authorization": f"Basic {token}"}, verify=ca_file, timeout=5
    )
    assert r.status_code == 401
    assert server.requests[-1].error == "malformed"


def test_fail_next_forces_401_then_recovers(
    server: FakeAPIServer, ca_file: str, token_issuer: TokenIssuer
) -> None:
    token = token_issuer.issue(audiences=[AUD], expiration_seconds=600)
    server.fail_next(2)
    with requests.Session() as s:
        codes = [
            s.get(f"{server.url}/version", headers=bearer(token), verify=ca_file, timeout=5).status_code
            for _ in range(3)
        ]
    assert codes == [401, 401, 200]
    assert [r.error for r in server.requests] == ["forced", "forced", None]


def test_pods_echo_redirect_and_not_found(
    server: FakeAPIServer, ca_file: str, token_issuer: TokenIssuer
) -> None:
    token = token_issuer.issue(audiences=[AUD], expiration_seconds=600)
    with requests.Session() as s:
        # verify= per request: REQUESTS_CA_BUNDLE in the environment would override s.verify
        s.headers.update(bearer(token))
        pods = s.get(f"{server.url}/api/v1/namespaces/team-a/pods", verify=ca_file, timeout=5).json()
        assert pods["kind"] == "PodList"
        assert {p["metadata"]["namespace"] for p in pods["items"]} == {"team-a"}
        echo = s.post(f"{server.url}/echo", data=b"x" * 70000, verify=ca_file, timeout=5).json()
        assert (echo["body_length"], echo["sub"]) == (70000, "system:serviceaccount:default:default")
        chunked = s.post(f"{server.url}/echo", data=iter([b"ab", b"cde"]), verify=ca_file, timeout=5).json()
        assert chunked["body_length"] == 5
        missing = s.get(f"{server.url}/apis/nothing", verify=ca_file, timeout=5)
        assert (missing.status_code, missing.json()["reason"]) == (404, "NotFound")
    r = requests.get(
        f"{server.url}/redirect",
        params={"to": "https://example.invalid/x"},
        verify=ca_file,
        allow_redirects=False,
        timeout=5,
    )
    assert (r.status_code, r.headers["Location"]) == (302, "https://example.invalid/x")


def test_rotate_ca_serves_new_connections_with_the_new_certificate(
    server: FakeAPIServer, ca_file: str, token_issuer: TokenIssuer, tmp_path: Path
) -> None:
    token = token_issuer.issue(audiences=[AUD], expiration_seconds=600)
    old_pem = server.ca_pem
    keep = requests.Session()
    assert (
        keep.get(f"{server.url}/version", headers=bearer(token), verify=ca_file, timeout=5).status_code == 200
    )
    new_pem = server.rotate_ca()
    assert new_pem != old_pem
    assert server.ca_pem == new_pem
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{server.url}/version", headers=bearer(token), verify=ca_file, timeout=5)
    new_file = server.write_ca(tmp_path / "new-ca.crt")
    assert (
        requests.get(f"{server.url}/version", headers=bearer(token), verify=new_file, timeout=5).status_code
        == 200
    )
    # the keep-alive connection opened before the rotation still works, like a real server's
    assert (
        keep.get(f"{server.url}/version", headers=bearer(token), verify=ca_file, timeout=5).status_code == 200
    )
    keep.close()
    assert server.handshake_failures == 1


def test_plain_http_and_close_ends_open_connections(token_issuer: TokenIssuer) -> None:
    token = token_issuer.issue(expiration_seconds=600)  # the default audience
    server = FakeAPIServer(token_issuer, tls=False)
    assert server.url.startswith("http://127.0.0.1:")
    with pytest.raises(RuntimeError, match="tls=False"):
        _ = server.ca_pem
    s = requests.Session()
    assert s.get(f"{server.url}/version", headers=bearer(token), timeout=5).status_code == 200
    start = time.monotonic()
    server.close()  # with a keep-alive connection still open
    assert time.monotonic() - start < 2
    server.close()  # idempotent
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", server.port), timeout=1),
    ):
        pass
    s.close()


def test_discovery_lists_and_watch_streams(server: FakeAPIServer, ca_file: str, token_issuer: TokenIssuer) -> None:
    """What the Kubernetes clients' watches and a kopf operator need: discovery, a list with a
    resourceVersion, and a watch stream that delivers newer events, ends after timeoutSeconds,
    and ends when the test closes it from the server side (the next stream gets what follows)."""
    headers = bearer(token_issuer.issue(audiences=[AUD]))

    def get(path: str, **kw: object) -> requests.Response:
        return requests.get(f"{server.url}{path}", headers=headers, verify=ca_file, timeout=10, **kw)  # type: ignore[arg-type]

    assert get("/api").json()["versions"] == ["v1"]
    assert {r["name"] for r in get("/api/v1").json()["resources"]} >= {"pods", "configmaps", "events", "namespaces"}
    assert get("/apis").json()["groups"][0]["name"] == "apiextensions.k8s.io"
    assert get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions").json()["items"] == []
    store = server.objects
    first = store.put("configmaps", {"metadata": {"name": "a", "namespace": "ns"}})
    listed = get("/api/v1/namespaces/ns/configmaps").json()
    assert [i["metadata"]["name"] for i in listed["items"]] == ["a"]
    assert listed["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    # a stream from before "a": ADDED a, then (after timeoutSeconds) its end
    started = time.monotonic()
    lines = get("/api/v1/namespaces/ns/configmaps?watch=true&resourceVersion=1&timeoutSeconds=1").text.splitlines()
    assert [(json.loads(x)["type"], json.loads(x)["object"]["metadata"]["name"]) for x in lines] == [("ADDED", "a")]
    assert 0.9 < time.monotonic() - started < 5
    # a stream ended from the server side, then a change: the next stream (from the last rv) has it
    with get(f"/api/v1/namespaces/ns/configmaps?watch=1&resourceVersion={listed['metadata']['resourceVersion']}",
             stream=True) as r:
        assert wait_until(lambda: store.watches_served == 2)
        store.close_watches()
        assert list(r.iter_lines()) == []
    store.put("configmaps", {"metadata": {"name": "a", "namespace": "ns"}, "data": {"k": "v"}})
    lines = get("/api/v1/namespaces/ns/configmaps?watch=true&resourceVersion=2&timeoutSeconds=0.2").text.splitlines()
    assert [json.loads(x)["type"] for x in lines] == ["MODIFIED"]
    assert server.requests[-1].token_jti is not None and all(r.authorized for r in server.requests)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()

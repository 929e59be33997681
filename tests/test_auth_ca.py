"""CA rotation for the HTTP clients: ``sa_token.requests.CAReloadingAdapter`` and
``sa_token.httpx.(Async)CAReloadingTransport`` over a real ``CABundle``.

Each test runs a real TLS ``FakeAPIServer`` and a kube-api-access style ``ProjectedVolume``
(``token`` + ``ca.crt``) written by ``Kubelet``. Then ``server.rotate_ca()`` switches the server
to a new CA and certificate for new connections, and the kubelet publishes the new ``ca.crt``
with the next ``..data`` swap. The client must notice on its own (inotify), verify new
connections against the new CA and stop using connections verified against the old one.
A client pinned to the old CA fails on the same server, which shows the rotation is real.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import requests

from conftest import wait_for
from sa_token import TokenSource
from sa_token._ca import CABundle
from sa_token.httpx import AsyncCAReloadingTransport, CAReloadingTransport
from sa_token.httpx import TokenAuth as HttpxTokenAuth
from sa_token.requests import CAReloadingAdapter
from sa_token.requests import TokenAuth as RequestsTokenAuth
from sa_token.testing import Kubelet, ProjectedVolume
from sa_token.testing.apiserver import FakeAPIServer

AUDIENCE = "sa-token-test"


def jti(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


class Cluster:
    """A server, a kube-api-access volume with its CA, and the sources a pod would open."""

    def __init__(self, server: FakeAPIServer, kubelet: Kubelet) -> None:
        self.server = server
        self.kubelet = kubelet
        self.ca = CABundle(kubelet.volume.path("ca.crt"))
        self.source = TokenSource(kubelet.volume.token_path)

    def rotate_ca(self) -> tuple[bytes, str]:
        """New CA on the server, then in the volume (with a new token, as one kubelet sync
        would). Returns the old CA's PEM and the new token."""
        old = self.server.ca_pem
        self.kubelet.ca_pem = self.server.rotate_ca()
        token = self.kubelet.rotate()
        assert wait_for(lambda: self.ca.generation == 2)  # inotify, no explicit refresh
        assert wait_for(lambda: self.source.token() == token)
        return old, token


@pytest.fixture
def cluster(tmp_path: Path, token_issuer: Any) -> Iterator[Cluster]:
    with FakeAPIServer(token_issuer, audiences=[AUDIENCE]) as server:
        volume = ProjectedVolume(tmp_path / "kube-api-access")
        kubelet = Kubelet(volume, token_issuer, audiences=[AUDIENCE], ca_pem=server.ca_pem)
        kubelet.rotate()
        c = Cluster(server, kubelet)
        yield c
        c.source.close()
        c.ca.close()


def _old_ca_fails(url: str, old_pem: bytes) -> None:
    pinned = ssl.create_default_context(cadata=old_pem.decode())
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(url, verify=pinned)


# ------------------------------------------------------------------------------ requests -----
def _requests_peer_cert(session: requests.Session, url: str) -> tuple[int, str, bytes]:
    with session.get(url, stream=True, timeout=10) as r:
        cert = r.raw.connection.sock.getpeercert(binary_form=True)
        return r.status_code, r.json()["jti"], cert


def test_requests_adapter_follows_a_ca_rotation(cluster: Cluster) -> None:
    session = requests.Session()  # trust_env on: REQUESTS_CA_BUNDLE, if set, must not matter
    session.mount("https://", CAReloadingAdapter(cluster.ca))
    session.auth = RequestsTokenAuth(cluster.source)
    url = f"{cluster.server.url}/echo"
    with session:
        status, seen, cert_before = _requests_peer_cert(session, url)
        assert (status, seen) == (200, jti(cluster.kubelet.current or ""))

        old_pem, token = cluster.rotate_ca()
        _old_ca_fails(url, old_pem)

        status, seen, cert_after = _requests_peer_cert(session, url)
        assert (status, seen) == (200, jti(token))
        # The pooled connection (verified against the old CA) was dropped: this one is new
        # and was verified against the new CA.
        assert cert_after != cert_before
    # urllib3 never loaded certifi or REQUESTS_CA_BUNDLE into the bundle's shared context.
    assert len(cluster.ca.ssl_context().get_ca_certs()) == 1


def test_requests_adapter_refuses_what_would_change_the_shared_context(cluster: Cluster) -> None:
    session = requests.Session()
    session.mount("https://", CAReloadingAdapter(cluster.ca))
    with session, pytest.raises(ValueError, match="verify=False"):
        session.get(f"{cluster.server.url}/version", verify=False, timeout=10)
    assert cluster.ca.ssl_context().verify_mode == ssl.CERT_REQUIRED


# ------------------------------------------------------------------------------ httpx --------
def _peer_cert(response: httpx.Response) -> bytes:
    ssl_object = response.extensions["network_stream"].get_extra_info("ssl_object")
    cert: bytes = ssl_object.getpeercert(True)  # the sync stream gives _ssl._SSLSocket: positional only
    return cert


def test_httpx_transport_follows_a_ca_rotation(cluster: Cluster) -> None:
    transport = CAReloadingTransport(cluster.ca)
    url = f"{cluster.server.url}/echo"
    with httpx.Client(transport=transport, auth=HttpxTokenAuth(cluster.source)) as client:
        with client.stream("GET", url) as r:
            r.read()
            cert_before = _peer_cert(r)
        assert (r.status_code, r.json()["jti"]) == (200, jti(cluster.kubelet.current or ""))

        old_pem, token = cluster.rotate_ca()
        _old_ca_fails(url, old_pem)

        with client.stream("GET", url) as r:
            r.read()
            cert_after = _peer_cert(r)
        assert (r.status_code, r.json()["jti"]) == (200, jti(token))
        assert cert_after != cert_before


def test_httpx_transport_refuses_verify_and_cert(cluster: Cluster) -> None:
    with pytest.raises(TypeError, match="verify="):
        CAReloadingTransport(cluster.ca, verify=False)
    with pytest.raises(TypeError, match="cert="):
        AsyncCAReloadingTransport(cluster.ca, cert="client.pem")


@pytest.mark.asyncio
async def test_httpx_async_transport_follows_a_ca_rotation(cluster: Cluster) -> None:
    transport = AsyncCAReloadingTransport(cluster.ca)
    url = f"{cluster.server.url}/echo"
    async with httpx.AsyncClient(transport=transport, auth=HttpxTokenAuth(cluster.source)) as client:
        async with client.stream("GET", url) as r:
            await r.aread()
            cert_before = _peer_cert(r)
        assert (r.status_code, r.json()["jti"]) == (200, jti(cluster.kubelet.current or ""))

        old_pem, token = cluster.rotate_ca()
        _old_ca_fails(url, old_pem)

        async with client.stream("GET", url) as r:
            await r.aread()
            cert_after = _peer_cert(r)
        assert (r.status_code, r.json()["jti"]) == (200, jti(token))
        assert cert_after != cert_before

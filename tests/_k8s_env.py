"""Shared setup for the Kubernetes client tests: a FakeAPIServer (TLS) and a kubelet-managed
kube-api-access volume (token, ca.crt, namespace) whose CA is the server's."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest

from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer
from sa_token.testing.apiserver import FakeAPIServer

# kube-apiserver's default audience, which the kubelet puts in kube-api-access tokens.
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
# Tokens minted this long ago with a 600 s lifetime expire 10 s after being written: a test that
# kept sending a token it should have replaced would soon be rejected by the server.
SHORT_LIFE = {"expiration_seconds": 600}
AGE = 590


@dataclass
class Cluster:
    server: FakeAPIServer
    kubelet: Kubelet
    volume: ProjectedVolume

    @property
    def token_path(self) -> str:
        return str(self.volume.token_path)

    @property
    def ca_path(self) -> str:
        return str(self.volume.path("ca.crt"))

    def rotate(self) -> str:
        """A new short-lived token; returns its jti."""
        token = self.kubelet.rotate(now=time.time() - AGE, **SHORT_LIFE)
        return jti(token)

    def rotate_ca(self) -> bytes:
        """The server gets a new CA and certificate; the kubelet publishes the new ca.crt."""
        pem = self.server.rotate_ca()
        self.kubelet.ca_pem = pem
        self.kubelet.rotate(now=time.time() - AGE, **SHORT_LIFE)
        return pem


def jti(token: str) -> str:
    value: str = jwt.decode(token, options={"verify_signature": False})["jti"]
    return value


def make_cluster(tmp_path: Path, token_issuer: TokenIssuer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """The body of each test module's ``cluster`` fixture (``yield from make_cluster(...)``)."""
    with FakeAPIServer(token_issuer, audiences=[API_AUDIENCE]) as server:
        volume = ProjectedVolume(tmp_path / "serviceaccount")
        kubelet = Kubelet(volume, token_issuer, audiences=[API_AUDIENCE], ca_pem=server.ca_pem, namespace="team-a")
        kubelet.rotate(now=time.time() - AGE, **SHORT_LIFE)
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
        yield Cluster(server, kubelet, volume)

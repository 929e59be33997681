"""A cluster for the sa_token.verify tests: a FakeAPIServer (TLS) with service-account issuer
discovery, the verifier's own projected token, and callers' tokens from the same issuer."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sa_token import TokenSource
from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer
from sa_token.testing.apiserver import FakeAPIServer
from sa_token.verify import TokenVerifier

AUDIENCE = "payments"


class Cluster:
    def __init__(self, tmp_path: Path, issuer: TokenIssuer) -> None:
        self.issuer = issuer
        self.server = FakeAPIServer(issuer, leeway=60)
        self.ca = self.server.write_ca(tmp_path / "ca.crt")
        self.volume = ProjectedVolume(tmp_path / "verifier-sa")
        self.kubelet = Kubelet(self.volume, issuer, namespace="verifier", service_account="verifier")
        self.kubelet.rotate()
        self.source = TokenSource(self.volume.token_path)
        self._verifiers: list[TokenVerifier] = []

    def verifier(self, **options: Any) -> TokenVerifier:
        options.setdefault("audience", AUDIENCE)
        options.setdefault("api_server", self.server.url)
        options.setdefault("ca", self.ca)
        options.setdefault("source", self.source)
        v = TokenVerifier(**options)
        self._verifiers.append(v)
        return v

    def token(self, **claims: Any) -> str:
        claims.setdefault("audiences", [AUDIENCE])
        return self.issuer.issue(**claims)

    def calls(self) -> int:
        """Requests the API server got for discovery, keys and reviews."""
        return sum(self.server.count(p) for p in ("/.well-known/openid-configuration", "/openid/v1/jwks",
                                                  "/apis/authentication.k8s.io/v1/tokenreviews"))

    def close(self) -> None:
        for v in self._verifiers:
            v.close()
        self.source.close()
        self.server.close()


@contextlib.contextmanager
def cluster(tmp_path: Path, issuer: TokenIssuer) -> Iterator[Cluster]:
    c = Cluster(tmp_path, issuer)
    try:
        yield c
    finally:
        c.close()


def dead_url() -> str:
    """An https URL on the loopback where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"https://127.0.0.1:{port}"

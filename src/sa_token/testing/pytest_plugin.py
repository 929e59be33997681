"""pytest plugin (registered by the ``pytest11`` entry point): fixtures for testing against
rotations.

* ``token_issuer`` (session): a :class:`~sa_token.testing.TokenIssuer` (RSA key generation is
  slow, so one per test session).
* ``projected_volume``: an empty :class:`~sa_token.testing.ProjectedVolume` under ``tmp_path``.
* ``kubelet``: a :class:`~sa_token.testing.Kubelet` over ``projected_volume`` that has already
  written a first token (audience ``sa-token-test``, 3600 s), so ``projected_volume.token_path``
  is ready for a ``TokenSource``.
* ``fake_sts``: a factory, ``fake_sts("azure", **options)``, of
  :class:`~sa_token.testing.sts.FakeSTS` token services verifying ``token_issuer``'s tokens;
  each is closed at teardown.

Importing this module is cheap: cryptography is only imported when a fixture is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pytest

if TYPE_CHECKING:
    from . import Kubelet, ProjectedVolume, TokenIssuer
    from .sts import FakeSTS

# The audience of the token the ``kubelet`` fixture writes.
TEST_AUDIENCE = "sa-token-test"


@pytest.fixture(scope="session")
def token_issuer() -> TokenIssuer:
    from . import TokenIssuer

    return TokenIssuer()


@pytest.fixture
def projected_volume(tmp_path: Path) -> ProjectedVolume:
    from . import ProjectedVolume

    return ProjectedVolume(tmp_path / "serviceaccount")


@pytest.fixture
def kubelet(projected_volume: ProjectedVolume, token_issuer: TokenIssuer) -> Iterator[Kubelet]:
    from . import Kubelet

    k = Kubelet(projected_volume, token_issuer, audiences=[TEST_AUDIENCE], expiration_seconds=3600)
    k.rotate()
    yield k
    k.stop()


@pytest.fixture
def fake_sts(token_issuer: TokenIssuer) -> Iterator[Callable[..., FakeSTS]]:
    from .sts import FakeSTS

    started: list[FakeSTS] = []

    def start(platform: str, **options: Any) -> FakeSTS:
        server = FakeSTS(token_issuer, platform=platform, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()

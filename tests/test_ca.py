"""CABundle follows ca.crt rotations made with the kubelet's ..data swap, and keeps the old CA
when the new file is unusable. Real files, real inotify, real TLS handshakes."""

from __future__ import annotations

import gc
import logging
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import wait_for
from sa_token import TokenFileError
from sa_token._ca import CABundle, CAFileError
from sa_token._hub import HUB
from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer
from sa_token.testing.apiserver import FakeAPIServer


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAPIServer]:
    with FakeAPIServer(TokenIssuer(key_size=2048)) as s:
        yield s


@pytest.fixture
def kube(projected_volume: ProjectedVolume, token_issuer: TokenIssuer, server: FakeAPIServer) -> Kubelet:
    k = Kubelet(projected_volume, token_issuer, ca_pem=server.ca_pem)
    k.rotate()
    return k


def handshake(ctx: ssl.SSLContext, server: FakeAPIServer) -> None:
    """One new TLS connection to the server, verified with ``ctx``; raises on failure."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() is not None


def test_loads_and_verifies_the_server(kube: Kubelet, server: FakeAPIServer) -> None:
    with CABundle(kube.volume.path("ca.crt")) as ca:
        assert ca.pem == server.ca_pem
        assert ca.generation == 1
        ctx = ca.ssl_context()
        assert ctx is ca.ssl_context()  # cached
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.check_hostname
        handshake(ctx, server)
        assert ca.watching
        assert "generation=1" in repr(ca)


def test_rotation_is_picked_up_by_inotify_and_new_connections_use_it(
    kube: Kubelet, server: FakeAPIServer, tmp_path: Path
) -> None:
    seen: list[bytes] = []
    # check_interval so long that only the inotify event can explain a change
    with CABundle(kube.volume.path("ca.crt"), check_interval=3600) as ca:
        ca.subscribe(seen.append)
        old_ctx = ca.ssl_context()
        for rotation in range(1, 4):
            new_pem = server.rotate_ca()
            kube.ca_pem = new_pem
            kube.rotate()
            assert wait_for(lambda: ca.generation == rotation + 1)  # noqa: B023
            assert ca.pem == new_pem
            ctx = ca.ssl_context()
            assert ctx is not old_ctx
            handshake(ctx, server)
            with pytest.raises(ssl.SSLCertVerificationError):
                handshake(old_ctx, server)
            old_ctx = ctx
        assert len(seen) == 3
        assert seen[-1] == server.ca_pem


def test_token_rotation_alone_changes_nothing(kube: Kubelet) -> None:
    seen: list[bytes] = []
    with CABundle(kube.volume.path("ca.crt"), check_interval=0) as ca:
        ca.subscribe(seen.append)
        ctx = ca.ssl_context()
        for _ in range(3):
            kube.rotate()  # a new timestamped dir: ca.crt has a new inode, same bytes
        assert ca.refresh() is False
        assert (ca.generation, seen) == (1, [])
        assert ca.ssl_context() is ctx


@pytest.mark.parametrize(
    ("bad", "cause"),
    [
        (b"", "is empty"),
        (b"not a certificate\n", "contains no PEM certificate"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a valid PEM"),
        (None, "does not exist"),  # ca.crt dropped from the payload
    ],
)
def test_a_bad_new_file_keeps_the_old_ca_with_one_warning(
    kube: Kubelet, server: FakeAPIServer, caplog: pytest.LogCaptureFixture, bad: bytes | None, cause: str
) -> None:
    caplog.set_level(logging.WARNING, logger="sa_token")
    vol = kube.volume
    with CABundle(vol.path("ca.crt"), check_interval=0) as ca:
        good = ca.pem
        for _ in range(3):  # the same problem three times, through events and explicit refreshes
            if bad is None:
                vol.write({"token": kube.mint(), "namespace": "default"})
            else:
                vol.rotate(kube.mint(), **{"ca.crt": bad})
            assert ca.refresh() is False
        assert ca.pem == good
        assert ca.generation == 1
        handshake(ca.ssl_context(), server)
        warnings = [r.getMessage() for r in caplog.records if "CA" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert cause in warnings[0]
        assert str(vol.path("ca.crt")) in warnings[0]
        assert "keeping the current CA bundle (generation 1)" in warnings[0]
        # a good file afterwards is taken
        new_pem = server.rotate_ca()
        vol.rotate(kube.mint(), **{"ca.crt": new_pem})
        assert wait_for(lambda: ca.generation == 2)
        handshake(ca.ssl_context(), server)


def test_polling_without_inotify_uses_check_interval(kube: Kubelet, server: FakeAPIServer) -> None:
    now = [1000.0]
    with CABundle(kube.volume.path("ca.crt"), watch=False, check_interval=60, clock=lambda: now[0]) as ca:
        assert not ca.watching
        new_pem = server.rotate_ca()
        kube.ca_pem = new_pem
        kube.rotate()
        now[0] += 59
        assert ca.pem != new_pem  # not yet due: no I/O on this call
        now[0] += 1
        assert ca.pem == new_pem  # due: checked and reloaded
        assert ca.generation == 2
        handshake(ca.ssl_context(), server)


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"garbage", "contains no PEM certificate"),
        (b"\xff-----BEGIN CERTIFICATE-----\n", "non-ASCII"),
        ("dir", "is a directory"),
    ],
)
def test_constructor_errors_are_typed_and_name_the_file(
    tmp_path: Path, content: bytes | str | None, cause: str
) -> None:
    path = tmp_path / "ca.crt"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(CAFileError) as info:
        CABundle(path)
    err = info.value
    assert isinstance(err, TokenFileError)
    assert isinstance(err, OSError)
    assert cause in str(err)
    assert str(path) in str(err)
    assert err.path == str(path)
    assert str(tmp_path) not in HUB.watched_directories()  # nothing left watched


def test_close_stops_watching_and_collection_unwatches(kube: Kubelet, server: FakeAPIServer) -> None:
    directory = str(kube.volume.directory)
    ca = CABundle(kube.volume.path("ca.crt"), check_interval=3600)
    assert directory in HUB.watched_directories()
    ca.close()
    assert directory not in HUB.watched_directories()
    kube.ca_pem = server.rotate_ca()
    kube.rotate()
    assert ca.refresh() is False
    assert ca.generation == 1
    ca2 = CABundle(kube.volume.path("ca.crt"))
    assert directory in HUB.watched_directories()
    del ca2
    gc.collect()
    # the finalizer only queues the clean-up (it may run under a lock); the timer does it
    assert wait_for(lambda: directory not in HUB.watched_directories(), timeout=5)


def test_invalid_check_interval() -> None:
    with pytest.raises(ValueError, match="check_interval"):
        CABundle("/nonexistent", check_interval=-1)

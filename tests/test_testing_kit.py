"""The test kit reproduces the kubelet and the API server faithfully (kubelet.md §1-§4)."""

from __future__ import annotations

import ctypes
import os
import re
import stat
import struct
import time
from pathlib import Path

import jwt
import pytest

from conftest import wait_for
from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer

TS_DIR = re.compile(r"^\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.\d{1,10}$")


def test_layout_after_first_write(projected_volume: ProjectedVolume, token_issuer: TokenIssuer) -> None:
    vol = projected_volume
    vol.write({"token": token_issuer.issue(), "ca.crt": b"pem", "namespace": "default"})
    entries = set(os.listdir(vol.directory))
    ts = [e for e in entries if TS_DIR.match(e)]
    assert len(ts) == 1 and entries == {ts[0], "..data", "token", "ca.crt", "namespace"}
    assert os.readlink(vol.directory / "..data") == ts[0]  # relative, no trailing slash
    for name in ("token", "ca.crt", "namespace"):
        assert os.readlink(vol.directory / name) == f"..data/{name}"
    assert stat.S_IMODE(os.stat(vol.directory / ts[0]).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(vol.token_path).st_mode) == 0o644  # defaultMode without securityContext


def test_rotation_swaps_data_and_removes_the_old_generation(
    projected_volume: ProjectedVolume, token_issuer: TokenIssuer
) -> None:
    vol = projected_volume
    vol.write({"token": "a.b.c", "namespace": "default"})
    old = os.readlink(vol.directory / "..data")
    vol.rotate("d.e.f")
    new = os.readlink(vol.directory / "..data")
    assert new != old and not (vol.directory / old).exists()
    assert vol.token_path.read_text() == "d.e.f" and (vol.directory / "namespace").read_text() == "default"
    assert not (vol.directory / "..data_tmp").exists()
    assert vol.write({"token": "d.e.f", "namespace": "default"}) is False  # unchanged: no swap
    assert os.readlink(vol.directory / "..data") == new


def test_dropped_key_removes_its_link(projected_volume: ProjectedVolume) -> None:
    vol = projected_volume
    vol.write({"token": "a.b.c", "extra": "x"})
    vol.write({"token": "a.b.c"})
    assert not os.path.lexists(vol.directory / "extra")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_fs_group_modes(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    vol = ProjectedVolume(tmp_path / "v", fs_group=4242)
    vol.write({"token": token_issuer.issue(), "ca.crt": b"pem"})
    st = os.stat(vol.token_path)
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == 4242  # 0600 -> 0640 with fsGroup
    assert stat.S_IMODE(os.stat(vol.directory / "ca.crt").st_mode) == 0o644
    ts = vol.data_dir
    assert stat.S_IMODE(os.stat(ts).st_mode) == 0o2755 and os.stat(ts).st_gid == 4242


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_run_as_user_mode(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    vol = ProjectedVolume(tmp_path / "v", fs_user=1234)
    vol.write({"token": token_issuer.issue()})
    st = os.stat(vol.token_path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 1234


def test_invalid_payload_paths_are_refused(projected_volume: ProjectedVolume) -> None:
    for bad in ("", "/abs", "a/../../b", "..hidden"):
        with pytest.raises(ValueError, match="invalid projected path"):
            projected_volume.write({bad: "x"})


def test_inotify_sees_the_kubelets_event_sequence(
    projected_volume: ProjectedVolume, token_issuer: TokenIssuer
) -> None:
    """A raw inotify watch on the volume root sees what kubelet.md §2.1 lists for one update."""
    libc = ctypes.CDLL(None, use_errno=True)
    IN_ATTRIB, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x4, 0x40, 0x80, 0x100, 0x200
    IN_ISDIR, IN_NONBLOCK = 0x40000000, 0o4000
    vol = projected_volume
    vol.write({"token": token_issuer.issue(), "namespace": "default"})
    fd = libc.inotify_init1(IN_NONBLOCK)
    assert fd >= 0
    try:
        mask = IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
        assert libc.inotify_add_watch(fd, os.fsencode(vol.directory), mask) >= 0
        old = os.readlink(vol.directory / "..data")
        vol.rotate(token_issuer.issue())
        new = os.readlink(vol.directory / "..data")
        buf = os.read(fd, 65536)
    finally:
        os.close(fd)
    events, i = [], 0
    while i < len(buf):
        _wd, m, _cookie, length = struct.unpack_from("iIII", buf, i)
        events.append((m & ~IN_ISDIR, os.fsdecode(buf[i + 16 : i + 16 + length].rstrip(b"\0"))))
        i += 16 + length
    assert events == [
        (IN_CREATE, new),
        (IN_ATTRIB, new),
        (IN_CREATE, "..data_tmp"),
        (IN_MOVED_FROM, "..data_tmp"),
        (IN_MOVED_TO, "..data"),
        (IN_DELETE, old),
    ]


def test_issuer_claims_match_a_bound_token(token_issuer: TokenIssuer) -> None:
    now = time.time()
    tok = token_issuer.issue(audiences=["vault"], expiration_seconds=7200, namespace="ns1",
                             service_account="sa1", pod="p1", node="n1", now=now)
    header = jwt.get_unverified_header(tok)
    assert header == {"alg": "RS256", "kid": token_issuer.kid}  # no "typ", like go-jose
    claims = token_issuer.verify(tok, audience="vault")
    assert claims["aud"] == ["vault"] and claims["exp"] - claims["iat"] == 7200
    assert claims["iat"] == claims["nbf"] == int(now)
    assert claims["sub"] == "system:serviceaccount:ns1:sa1"
    k8s = claims["kubernetes.io"]
    assert k8s["namespace"] == "ns1" and k8s["pod"]["name"] == "p1" and k8s["node"]["name"] == "n1"
    assert k8s["serviceaccount"]["name"] == "sa1" and "uid" in k8s["serviceaccount"]
    assert len(token_issuer.kid) == 43 and len(claims["jti"]) == 36


def test_issuer_verify_rejects_what_the_api_server_rejects(token_issuer: TokenIssuer) -> None:
    expired = token_issuer.issue(audiences=["vault"], expiration_seconds=600, now=time.time() - 601)
    with pytest.raises(jwt.ExpiredSignatureError):
        token_issuer.verify(expired, audience="vault")
    with pytest.raises(jwt.InvalidAudienceError):
        token_issuer.verify(token_issuer.issue(audiences=["other"]), audience="vault")
    other = TokenIssuer()
    with pytest.raises(jwt.InvalidSignatureError):
        token_issuer.verify(other.issue(audiences=["vault"]), audience="vault")
    jwk = token_issuer.jwks()["keys"][0]
    assert jwk["kid"] == token_issuer.kid and jwk["alg"] == "RS256" and jwk["e"] == "AQAB"
    key = jwt.PyJWK(jwk).key
    assert jwt.decode(token_issuer.issue(audiences=["vault"]), key, algorithms=["RS256"], audience="vault")


def test_kubelet_fixture_and_background_rotation(kubelet: Kubelet, projected_volume: ProjectedVolume) -> None:
    assert projected_volume.token_path.read_text() == kubelet.current
    assert (projected_volume.directory / "namespace").read_text() == "default"
    first = kubelet.current
    kubelet.start(every=0.01)
    assert wait_for(lambda: kubelet.rotations >= 4)
    kubelet.stop()
    assert projected_volume.token_path.read_text() != first
    assert projected_volume.token_path.read_text() == kubelet.current

"""``sa_token.testing.KubeletProcess``: a kubelet in another process publishes exactly as the
in-process one does, and says when each ``..data`` swap happened."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from conftest import wait_for
from sa_token import TokenSource
from sa_token.testing import KubeletProcess, ProjectedVolume, Publication, TokenIssuer

AUD = "sa-token-test"


def test_publish_swaps_the_volume_and_reports_when(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    vol = ProjectedVolume(tmp_path / "vol")
    first, second = (token_issuer.issue(audiences=[AUD]) for _ in range(2))
    with KubeletProcess(vol) as kubelet:
        t0 = time.perf_counter()
        pub = kubelet.publish(first)
        t1 = time.perf_counter()
        assert pub.number == 1 and kubelet.rotations == 1 and kubelet.last == pub
        assert pub.before is not None and pub.after is not None
        assert t0 < pub.before <= pub.after < t1  # one clock for both processes
        assert kubelet.token_path.read_text() == first
        assert (vol.directory / "namespace").read_text() == "default"  # the first write's payload
        data_dir = os.readlink(vol.directory / "..data")
        kubelet.publish(second)
        assert vol.token_path.read_text() == second
        assert os.readlink(vol.directory / "..data") != data_dir
        assert not (vol.directory / data_dir).exists()  # the old generation is removed
        unchanged = kubelet.publish(second)
        assert unchanged.before is None and unchanged.number == 3  # same payload: no swap


def test_keeps_the_volumes_other_files(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    vol = ProjectedVolume(tmp_path / "vol", fs_user=os.getuid())
    vol.write({"token": token_issuer.issue(), "ca.crt": "CA\n", "namespace": "payments"})
    with KubeletProcess(vol) as kubelet:
        kubelet.publish(token_issuer.issue())
    assert (vol.directory / "ca.crt").read_text() == "CA\n"
    assert (vol.directory / "namespace").read_text() == "payments"
    assert oct(os.stat(vol.token_path).st_mode & 0o777) == "0o600"  # the volume's modes too


def test_rotate_mints_with_the_issuers_key(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    vol = ProjectedVolume(tmp_path / "vol")
    with KubeletProcess(
        vol, token_issuer, audiences=[AUD], expiration_seconds=600, namespace="ns"
    ) as kubelet:
        kubelet.rotate()
        claims = token_issuer.verify(vol.token_path.read_text(), audience=AUD)
        assert claims["exp"] - claims["iat"] == 600
        assert claims["kubernetes.io"]["namespace"] == "ns"
    with KubeletProcess(vol) as kubelet:
        with pytest.raises(RuntimeError, match="pass an issuer"):
            kubelet.rotate()
        with pytest.raises(RuntimeError, match="pass an issuer"):
            kubelet.start(every=1)
        kubelet._proc.kill()
        with pytest.raises(RuntimeError, match="died"):
            kubelet.publish(token_issuer.issue())


def test_schedule_publishes_given_tokens_in_order(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    vol = ProjectedVolume(tmp_path / "vol")
    vol.write({"token": token_issuer.issue(audiences=[AUD])})
    tokens = [token_issuer.issue(audiences=[AUD]) for _ in range(5)]
    seen: list[Publication] = []
    with (
        TokenSource(vol.token_path, audience=AUD) as src,
        KubeletProcess(vol, on_publish=seen.append) as kubelet,
    ):
        values: list[str] = []
        src.subscribe(lambda tok: values.append(tok.value))
        kubelet.start(every=0.01, tokens=tokens)
        with pytest.raises(RuntimeError, match="stop"):
            kubelet.publish(tokens[0])
        assert wait_for(lambda: kubelet.rotations == 5)
        assert kubelet.stop() == 5
        assert [p.number for p in seen] == [1, 2, 3, 4, 5]
        assert all(p.before is not None for p in seen)
        assert wait_for(lambda: src.token() == tokens[-1])
        assert set(values) <= set(tokens)
        kubelet.publish(tokens[0])  # after stop(), publishing works again
        assert kubelet.rotations == 6


def test_schedule_mints_until_stopped_and_close_ends_the_process(
    tmp_path: Path, token_issuer: TokenIssuer
) -> None:
    vol = ProjectedVolume(tmp_path / "vol")
    kubelet = KubeletProcess(vol, token_issuer, audiences=[AUD])
    kubelet.start(every=0.005)
    assert wait_for(lambda: kubelet.rotations >= 3)
    threads = threading.active_count()
    kubelet.close()  # stops the schedule too
    assert kubelet._proc.returncode == 0
    assert threading.active_count() == threads - 1  # the reader thread is gone
    token_issuer.verify(vol.token_path.read_text(), audience=AUD)


def test_issuer_key_round_trip(token_issuer: TokenIssuer) -> None:
    copy = TokenIssuer(key_pem=token_issuer.private_key_pem)
    assert copy.kid == token_issuer.kid
    token_issuer.verify(copy.issue(audiences=[AUD]), audience=AUD)

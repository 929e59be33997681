"""``sa-token verify``, run as a process against the kit's FakeAPIServer: the identity or the
reason, exit 0/1/2, never the token."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests._verify_kit import AUDIENCE, Cluster, cluster, dead_url

from sa_token.testing import TokenIssuer, assert_no_token


@pytest.fixture
def c(tmp_path: Path, token_issuer: TokenIssuer) -> Iterator[Cluster]:
    with cluster(tmp_path, token_issuer) as found:
        yield found


def run(c: Cluster, *args: str, stdin: str = "", api_server: str = "") -> subprocess.CompletedProcess[str]:
    common = ["--api-server", api_server or c.server.url, "--ca", c.ca, "--bearer-file", str(c.volume.token_path)]
    return subprocess.run(
        [sys.executable, "-m", "sa_token", "verify", *args, *common],
        input=stdin, capture_output=True, text=True, timeout=60, check=False,
    )


def test_a_valid_token_prints_the_identity(c: Cluster, tmp_path: Path) -> None:
    token = c.token(namespace="shop", service_account="api", pod="api-7")
    (tmp_path / "t").write_text(token + "\n")
    for method in ("jwks", "tokenreview"):
        p = run(c, str(tmp_path / "t"), "--audience", AUDIENCE, "--method", method)
        assert p.returncode == 0, p.stderr
        assert p.stdout.startswith(f"verified: system:serviceaccount:shop:api (pod shop/api-7) by {method}")
        assert_no_token(p.stdout + p.stderr, [token], what="the output")
    p = run(c, "-", "--audience", "other", "--audience", AUDIENCE, "--json", stdin=token)
    facts = json.loads(p.stdout)
    assert (p.returncode, facts["ok"], facts["pod"], facts["audiences"]) == (0, True, "api-7", [AUDIENCE])


def test_refused_is_1_undecidable_is_2(c: Cluster, tmp_path: Path) -> None:
    token = c.token(audiences=["someone-else"])
    p = run(c, "-", "--audience", AUDIENCE, stdin=token)
    assert p.returncode == 1 and p.stderr.startswith("sa-token: audience-mismatch: the token is for audience")
    assert_no_token(p.stdout + p.stderr, [token], what="the output")
    p = run(c, "-", "--audience", AUDIENCE, stdin="not a token")
    assert p.returncode == 2 and "malformed" in p.stderr
    p = run(c, "-", "--audience", AUDIENCE, stdin=c.token(), api_server=dead_url())
    assert p.returncode == 2 and "unavailable: " in p.stderr
    p = run(c, str(tmp_path / "missing"), "--audience", AUDIENCE)
    assert p.returncode == 2 and "cannot read" in p.stderr

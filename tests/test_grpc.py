"""sa_token.grpc against a real grpcio server on 127.0.0.1 with TLS (a trustme CA, like the test
kit's API server) whose server interceptor verifies every call's bearer token as the API server
would (RS256 signature, audience, expiry) and answers UNAUTHENTICATED otherwise; sync and
``grpc.aio`` clients across rotations and a forced rejection."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any, Callable, Optional

import jwt
import pytest

grpc = pytest.importorskip("grpc")
trustme = pytest.importorskip("trustme")

import sa_token.grpc as sa_grpc  # noqa: E402
from conftest import wait_for  # noqa: E402
from sa_token import TokenSource  # noqa: E402
from sa_token._observe import auth_retries  # noqa: E402
from sa_token.testing import Kubelet, TokenIssuer  # noqa: E402

AUDIENCE = "sa-token-test"
METHOD = "/sa_token.test.Echo/Call"


def jti(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


class Verifier(grpc.ServerInterceptor):
    """Authenticates each call like the API server: a verified bearer token or UNAUTHENTICATED."""

    def __init__(self, issuer: TokenIssuer) -> None:
        self.issuer = issuer
        self.lock = threading.Lock()
        self.seen: list[tuple[str, Optional[str]]] = []  # (outcome, jti)
        self.reject = 0

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        header = dict(details.invocation_metadata).get("authorization", "")
        outcome, token_jti = "ok", None
        try:
            scheme, _, token = header.partition(" ")
            token_jti = jti(token) if token else None
            if scheme != "Bearer":
                raise jwt.InvalidTokenError("no bearer token")
            self.issuer.verify(token, audience=[AUDIENCE], leeway=0)
        except jwt.InvalidTokenError as exc:
            outcome = type(exc).__name__
        with self.lock:
            if outcome == "ok" and self.reject:
                self.reject -= 1
                outcome = "forced"
            self.seen.append((outcome, token_jti))
        if outcome != "ok":
            def deny(request: bytes, context: grpc.ServicerContext) -> bytes:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, outcome)
                raise AssertionError("unreachable")

            return grpc.unary_unary_rpc_method_handler(deny)
        return continuation(details)


class Server:
    def __init__(self, issuer: TokenIssuer) -> None:
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_pem = ca.cert_pem.bytes()
        self.verifier = Verifier(issuer)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[self.verifier])
        handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request[::-1])
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("sa_token.test.Echo", {"Call": handler}),))
        creds = grpc.ssl_server_credentials([(leaf.private_key_pem.bytes(), leaf.cert_chain_pems[0].bytes())])
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.target = f"127.0.0.1:{self.port}"
        self.server.start()

    def statuses(self) -> list[tuple[str, Optional[str]]]:
        with self.verifier.lock:
            return list(self.verifier.seen)


@pytest.fixture(scope="module")
def server(token_issuer: TokenIssuer) -> Iterator[Server]:
    s = Server(token_issuer)
    yield s
    s.server.stop(None)


@pytest.fixture
def fresh(server: Server) -> Server:
    with server.verifier.lock:
        server.verifier.seen.clear()
        server.verifier.reject = 0
    return server


def test_sync_channel_follows_rotations_and_retries_a_rejection_once(fresh: Server, kubelet: Kubelet) -> None:
    with TokenSource(kubelet.volume.token_path) as source:
        creds = sa_grpc.channel_credentials(source, root_certificates=fresh.ca_pem)
        with grpc.secure_channel(fresh.target, creds) as raw:
            call = sa_grpc.intercept_channel(raw, source).unary_unary(METHOD)
            minted = []
            for _ in range(3):
                token = kubelet.rotate()
                minted.append(jti(token))
                assert wait_for(lambda token=token: source.token() == token)
                assert call(b"abc", timeout=10) == b"cba"
            assert fresh.statuses() == [("ok", j) for j in minted]

    # The server rejects a token the source has not seen replaced yet: re-read, retry once.
    with TokenSource(kubelet.volume.token_path, watch=False, refresh_interval=3600) as lagging:
        creds = sa_grpc.channel_credentials(lagging, root_certificates=fresh.ca_pem)
        with grpc.secure_channel(fresh.target, creds) as raw:
            call = sa_grpc.intercept_channel(raw, lagging).unary_unary(METHOD)
            new = kubelet.rotate()
            fresh.verifier.seen.clear()
            retries = auth_retries().get("grpc", 0)
            fresh.verifier.reject = 1
            assert call(b"xy", timeout=10) == b"yx"
            assert fresh.statuses() == [("forced", minted[-1]), ("ok", jti(new))]
            assert auth_retries()["grpc"] == retries + 1
            # The same token after the re-read: the rejection is the answer, no retry.
            fresh.verifier.seen.clear()
            fresh.verifier.reject = 1
            with pytest.raises(grpc.RpcError) as info:
                call(b"xy", timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert fresh.statuses() == [("forced", jti(new))]


def test_an_expired_token_is_refused_by_the_server(fresh: Server, kubelet: Kubelet, token_issuer: TokenIssuer) -> None:
    """What the verifier checks: a token that expired is UNAUTHENTICATED (the rotations above
    pass because the plugin sends the current one)."""
    now = time.time()
    expired = token_issuer.issue(audiences=[AUDIENCE], now=now - 700, expiration_seconds=600)
    with grpc.secure_channel(fresh.target, grpc.ssl_channel_credentials(fresh.ca_pem)) as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(METHOD)(b"a", metadata=(("authorization", f"Bearer {expired}"),), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert fresh.statuses() == [("ExpiredSignatureError", jti(expired))]


def test_a_callers_own_authorization_is_not_retried(fresh: Server, kubelet: Kubelet) -> None:
    with TokenSource(kubelet.volume.token_path, watch=False) as source:
        # local credentials for a loopback peer would do too; TLS here, without our call credentials
        with grpc.secure_channel(fresh.target, grpc.ssl_channel_credentials(fresh.ca_pem)) as raw:
            call = sa_grpc.intercept_channel(raw, source).unary_unary(METHOD)
            own = kubelet.current or ""
            kubelet.rotate()
            fresh.verifier.reject = 1
            with pytest.raises(grpc.RpcError):
                call(b"a", metadata=(("authorization", f"Bearer {own}"),), timeout=10)
            assert fresh.statuses() == [("forced", jti(own))]


def test_plugin_answers_from_memory_and_reads_a_due_file_off_its_thread(kubelet: Kubelet, count_opens: Any) -> None:
    with TokenSource(kubelet.volume.token_path, watch=False) as source:
        plugin = sa_grpc._Plugin(sa_grpc.BearerFlow(source, client="grpc"))
        context = type("Ctx", (), {"service_url": "https://api.example:443/svc", "method_name": "Call"})()
        answers: list[tuple[Any, Any, int]] = []

        def callback(metadata: Any, error: Any) -> None:
            answers.append((metadata, error, threading.get_ident()))

        opens = count_opens(kubelet.volume.token_path)
        plugin(context, callback)
        assert opens.count == 0 and answers[0][0] == (("authorization", f"Bearer {source.token()}"),)
        new = kubelet.rotate()
        source.invalidate()
        plugin(context, callback)  # a read is due: it happens in another thread
        assert wait_for(lambda: len(answers) == 2)
        assert answers[1][0] == (("authorization", f"Bearer {new}"),)
        assert answers[1][2] != threading.get_ident()
        scoped = sa_grpc._Plugin(sa_grpc.BearerFlow(source, hosts=["other.example"], client="grpc"))
        scoped(context, callback)
        assert answers[2][:2] == ((), None)  # another host: no token


@pytest.mark.asyncio
async def test_aio_channel_rotations_and_a_forced_rejection(fresh: Server, kubelet: Kubelet) -> None:
    with TokenSource(kubelet.volume.token_path, watch=False, refresh_interval=3600) as source:
        creds = sa_grpc.channel_credentials(source, root_certificates=fresh.ca_pem)
        async with grpc.aio.secure_channel(fresh.target, creds, interceptors=[sa_grpc.aio_interceptor(source)]) as channel:
            call = channel.unary_unary(METHOD)
            seen = []
            for _ in range(3):
                new = kubelet.rotate()
                seen.append(jti(new))
                source.invalidate()  # as inotify would; the plugin reads it off the loop
                assert await call(b"abc", timeout=10) == b"cba"
            new = kubelet.rotate()  # the source has not noticed: the server's rejection makes it
            fresh.verifier.reject = 1
            assert await call(b"abc", timeout=10) == b"cba"
            assert fresh.statuses() == [("ok", j) for j in seen] + [("forced", seen[-1]), ("ok", jti(new))]
    await asyncio.sleep(0)


def test_aio_channels_are_refused_by_intercept_channel(kubelet: Kubelet) -> None:
    async def make() -> None:
        channel = grpc.aio.insecure_channel("127.0.0.1:1")
        with TokenSource(kubelet.volume.token_path) as source, pytest.raises(TypeError, match="aio_interceptor"):
            sa_grpc.intercept_channel(channel, source)
        await channel.close()

    asyncio.run(make())

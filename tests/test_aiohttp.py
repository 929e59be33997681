"""sa_token.aiohttp.TokenMiddleware against aiohttp's own web server on 127.0.0.1 (TLS from a
trustme CA, like the test kit's API server), which verifies each bearer token as the API server
would: across rotations, a 401 retry, hosts scoping, redirects to another host (no token), and a
body that can be read only once (no retry). The shared rules also run in
test_auth_compliance.py against the FakeAPIServer."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any, Optional

import aiohttp
import jwt
import pytest
import trustme
from aiohttp import web

from sa_token import TokenSource
from sa_token.aiohttp import TokenMiddleware
from sa_token.testing import Kubelet, TokenIssuer

AUDIENCE = "sa-token-test"


def jti(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


class Service:
    """An aiohttp application that authenticates like the API server and records what it saw."""

    def __init__(self, issuer: TokenIssuer) -> None:
        self.issuer = issuer
        self.seen: list[tuple[int, Optional[str]]] = []  # (status, jti or None)
        self.reject = 0
        self.app = web.Application()
        self.app.router.add_route("*", "/echo", self.echo)
        self.app.router.add_get("/redirect", self.redirect)

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token_jti = jti(token) if token else None
        try:
            if scheme != "Bearer":
                raise jwt.InvalidTokenError("no bearer token")
            self.issuer.verify(token, audience=[AUDIENCE], leeway=0)
        except jwt.InvalidTokenError:
            self.seen.append((401, token_jti))
            return web.json_response({"error": "unauthorized"}, status=401)
        if self.reject:
            self.reject -= 1
            self.seen.append((401, token_jti))
            return web.json_response({"error": "forced"}, status=401)
        self.seen.append((200, token_jti))
        return web.json_response({"jti": token_jti, "length": len(body)})

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])


@pytest.fixture
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


async def serve(service: Service, ctx: ssl.SSLContext) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(service.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


@pytest.mark.asyncio
async def test_real_aiohttp_server(kubelet: Kubelet, token_issuer: TokenIssuer,
                                   tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    main, other = Service(token_issuer), Service(token_issuer)
    runners = [await serve(main, tls[0]), await serve(other, tls[0])]
    (_, port), (_, other_port) = runners
    url = f"https://127.0.0.1:{port}"
    connector = aiohttp.TCPConnector(ssl=tls[1])
    try:
        with TokenSource(kubelet.volume.token_path, watch=False, refresh_interval=3600) as source:
            mw = TokenMiddleware(source, hosts=[f"127.0.0.1:{port}"])
            async with aiohttp.ClientSession(middlewares=(mw,), connector=connector) as s:

                async def get(target: str, **kwargs: Any) -> tuple[int, Any]:
                    async with s.request(kwargs.pop("method", "GET"), target, **kwargs) as r:
                        return r.status, await r.json()

                # rotations: each one the source sees is sent by the next request
                minted = []
                for _ in range(3):
                    minted.append(jti(kubelet.rotate()))
                    source.invalidate()  # as inotify would
                    assert (await get(f"{url}/echo"))[1]["jti"] == minted[-1]
                # a rejection of a token the source has not seen replaced: re-read, retry once
                new = jti(kubelet.rotate())
                main.reject = 1
                status, body = await get(f"{url}/echo", method="POST", data=b"x" * 1000)
                assert (status, body) == (200, {"jti": new, "length": 1000})
                assert main.seen[-2:] == [(401, minted[-1]), (200, new)]
                # hosts: the other service (another port) gets no token, and its 401 is no retry
                assert (await get(f"https://127.0.0.1:{other_port}/echo"))[0] == 401
                assert other.seen == [(401, None)]
                # a redirect to another host carries no token
                other.seen.clear()
                status, _ = await get(f"{url}/redirect?to=https://localhost:{other_port}/echo")
                assert (status, other.seen) == (401, [(401, None)])
                # a body that can be read only once: the 401 is the answer, the next request re-reads
                newest = jti(kubelet.rotate())
                main.reject = 1

                async def chunks() -> AsyncIterator[bytes]:
                    yield b"a" * 10

                status, _ = await get(f"{url}/echo", method="POST", data=chunks())
                assert status == 401 and main.seen[-1] == (401, new)
                assert (await get(f"{url}/echo"))[1]["jti"] == newest
            # without hosts=: the origin of the first request only
            async with aiohttp.ClientSession(middlewares=(TokenMiddleware(source),),
                                             connector=aiohttp.TCPConnector(ssl=tls[1])) as s:
                async with s.get(f"{url}/redirect?to=https://localhost:{other_port}/echo") as r:
                    assert r.status == 401
                assert other.seen[-1] == (401, None)
    finally:
        for runner, _ in runners:
            await runner.cleanup()

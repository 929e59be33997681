"""sa_token.verify's server integrations behind real servers on the loopback: uvicorn (a plain
ASGI app with the middleware, websockets included, and a FastAPI app with the dependency),
werkzeug's server (Flask), aiohttp's server, grpcio (sync and aio). Each: no token 401, wrong
audience 401, valid 200 with the identity, API server down 503."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import requests
from tests._verify_kit import Cluster, cluster, dead_url

from sa_token.testing import TokenIssuer
from sa_token.verify import Identity, TokenVerifier


@pytest.fixture
def c(tmp_path: Path, token_issuer: TokenIssuer) -> Iterator[Cluster]:
    with cluster(tmp_path, token_issuer) as found:
        yield found


class Verifiers:
    def __init__(self, c: Cluster) -> None:
        self.ok = c.verifier()
        self.down = c.verifier(api_server=dead_url(), issuer=c.issuer.issuer)  # keys cannot be fetched
        self.good, self.foreign = c.token(), c.token(audiences=["someone-else"])


@pytest.fixture
def v(c: Cluster) -> Verifiers:
    return Verifiers(c)


def _headers(token: Optional[str]) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def check_http(url_ok: str, url_down: str, v: Verifiers) -> None:
    """The four answers every integration gives."""
    r = requests.get(url_ok, timeout=10)
    assert (r.status_code, r.headers["WWW-Authenticate"]) == (401, "Bearer")
    r = requests.get(url_ok, headers=_headers(v.foreign), timeout=10)
    assert (r.status_code, r.headers["WWW-Authenticate"]) == (401, 'Bearer error="invalid_token"')
    assert v.foreign not in r.text and "someone-else" in r.text
    r = requests.get(url_ok, headers=_headers(v.good), timeout=10)
    assert (r.status_code, r.text) == (200, "system:serviceaccount:default:default app-0")
    r = requests.get(url_down, headers=_headers(v.good), timeout=10)
    assert r.status_code == 503 and "WWW-Authenticate" not in r.headers


def _who(identity: Any) -> str:
    assert isinstance(identity, Identity)
    return f"{identity.username} {identity.pod}"


# ----------------------------------------------------------------------- ASGI (uvicorn) ---
@contextlib.contextmanager
def uvicorn_serving(app: Any) -> Iterator[str]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def plain_asgi_app() -> tuple[Callable[..., Any], list[str]]:
    events: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                events.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        if scope["type"] == "websocket":
            events.append("websocket reached the app")
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
            return
        body = b"ok" if scope["path"] == "/healthz" else _who(scope.get("sa_token.identity")).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})

    return app, events


def _websocket_status(base: str, token: Optional[str]) -> int:
    host, port = base.removeprefix("http://").split(":") if hasattr(str, "removeprefix") else base[7:].split(":")
    key = base64.b64encode(os.urandom(16)).decode()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = (
        f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request.encode())
        status_line = s.recv(4096).split(b"\r\n", 1)[0]
    return int(status_line.split()[1])


def test_asgi_middleware_behind_uvicorn(v: Verifiers) -> None:
    from sa_token.verify.asgi import TokenAuthMiddleware

    app, events = plain_asgi_app()
    with uvicorn_serving(TokenAuthMiddleware(app, v.ok)) as ok, uvicorn_serving(
        TokenAuthMiddleware(app, v.down)
    ) as down:
        check_http(f"{ok}/who", f"{down}/who", v)
        assert requests.get(f"{ok}/healthz", timeout=10).text == "ok"  # exempt
        # websockets: a refused one never reaches the app
        assert _websocket_status(ok, None) in (401, 403)
        assert _websocket_status(ok, v.foreign) in (401, 403)
        assert "websocket reached the app" not in events
        assert _websocket_status(ok, v.good) == 101
        assert "websocket reached the app" in events
    assert events.count("lifespan.startup") == 2 and events.count("lifespan.shutdown") == 2  # passed through


def test_fastapi_dependency_behind_uvicorn(v: Verifiers) -> None:
    from fastapi import Depends, FastAPI
    from fastapi.responses import PlainTextResponse

    from sa_token.verify.asgi import require_identity

    def make(verifier: TokenVerifier) -> FastAPI:
        api = FastAPI()
        need = require_identity(verifier)

        @api.get("/who", response_class=PlainTextResponse)
        async def who(identity: Identity = Depends(need)) -> str:  # noqa: B008
            return _who(identity)

        return api

    ok_app = make(v.ok)
    with uvicorn_serving(ok_app) as ok, uvicorn_serving(make(v.down)) as down:
        check_http(f"{ok}/who", f"{down}/who", v)
        schema = requests.get(f"{ok}/openapi.json", timeout=10).json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer", "description": "A projected ServiceAccount token"}


# ----------------------------------------------------------------------- WSGI (werkzeug) --
@contextlib.contextmanager
def werkzeug_serving(app: Any) -> Iterator[str]:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


def test_wsgi_middleware_behind_werkzeug_with_flask(v: Verifiers) -> None:
    from flask import Flask, request

    from sa_token.verify.wsgi import TokenAuthMiddleware

    def make(verifier: TokenVerifier) -> Flask:
        app = Flask(__name__)

        @app.get("/who")
        def who() -> str:
            return _who(request.environ["sa_token.identity"])

        @app.get("/healthz")
        def healthz() -> str:
            return "ok"

        app.wsgi_app = TokenAuthMiddleware(app.wsgi_app, verifier)  # type: ignore[method-assign]
        return app

    with werkzeug_serving(make(v.ok)) as ok, werkzeug_serving(make(v.down)) as down:
        check_http(f"{ok}/who", f"{down}/who", v)
        assert requests.get(f"{ok}/healthz", timeout=10).text == "ok"


# ----------------------------------------------------------------------- aiohttp ---------
@pytest.mark.asyncio
async def test_aiohttp_middleware_behind_aiohttps_server(v: Verifiers) -> None:
    from aiohttp import web

    from sa_token.verify.aiohttp import middleware

    async def who(request: web.Request) -> web.Response:
        return web.Response(text=_who(request["sa_token.identity"]))

    runners = []
    urls = []
    for verifier in (v.ok, v.down):
        app = web.Application(middlewares=[middleware(verifier)])
        app.router.add_get("/who", who)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{port}/who")
    try:
        await asyncio.get_running_loop().run_in_executor(None, check_http, urls[0], urls[1], v)
    finally:
        for runner in runners:
            await runner.cleanup()


# ----------------------------------------------------------------------- gRPC ------------
def _grpc_handlers(aio: bool) -> Any:
    import grpc

    from sa_token.verify.grpc import current_identity

    if aio:
        async def who(request: bytes, context: Any) -> bytes:
            return _who(current_identity()).encode()

        async def many(request: bytes, context: Any) -> Any:
            for _ in range(2):
                yield _who(current_identity()).encode()
    else:
        def who(request: bytes, context: Any) -> bytes:  # type: ignore[misc]
            return _who(current_identity()).encode()

        def many(request: bytes, context: Any) -> Any:  # type: ignore[misc]
            for _ in range(2):
                yield _who(current_identity()).encode()

    return grpc.method_handlers_generic_handler("test.Who", {
        "Who": grpc.unary_unary_rpc_method_handler(who),
        "Many": grpc.unary_stream_rpc_method_handler(many),
    })


def check_grpc(target_ok: str, target_down: str, v: Verifiers) -> None:
    import grpc

    def call(target: str, token: Optional[str], method: str = "Who") -> tuple[grpc.StatusCode, Any]:
        metadata = [] if token is None else [("authorization", f"Bearer {token}")]
        with grpc.insecure_channel(target) as channel:
            try:
                if method == "Many":
                    out = list(channel.unary_stream("/test.Who/Many")(b"", metadata=metadata, timeout=10))
                else:
                    out = channel.unary_unary("/test.Who/Who")(b"", metadata=metadata, timeout=10)
            except grpc.RpcError as exc:
                return exc.code(), exc.details()
        return grpc.StatusCode.OK, out

    assert call(target_ok, None)[0] == grpc.StatusCode.UNAUTHENTICATED
    code, details = call(target_ok, v.foreign)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "someone-else" in details and v.foreign not in details
    assert call(target_ok, v.good) == (grpc.StatusCode.OK, b"system:serviceaccount:default:default app-0")
    assert call(target_ok, v.good, "Many") == (grpc.StatusCode.OK, [b"system:serviceaccount:default:default app-0"] * 2)
    assert call(target_ok, None, "Many")[0] == grpc.StatusCode.UNAUTHENTICATED
    assert call(target_down, v.good)[0] == grpc.StatusCode.UNAVAILABLE


def test_grpc_server_interceptor(v: Verifiers) -> None:
    import grpc

    from sa_token.verify.grpc import server_interceptor

    servers, targets = [], []
    for verifier in (v.ok, v.down):
        server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[server_interceptor(verifier)])
        server.add_generic_rpc_handlers((_grpc_handlers(aio=False),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        targets.append(f"127.0.0.1:{port}")
    try:
        check_grpc(targets[0], targets[1], v)
    finally:
        for server in servers:
            server.stop(None)


@pytest.mark.asyncio
async def test_grpc_aio_server_interceptor(v: Verifiers) -> None:
    import grpc

    from sa_token.verify.grpc import aio_server_interceptor

    servers, targets = [], []
    for verifier in (v.ok, v.down):
        server = grpc.aio.server(interceptors=[aio_server_interceptor(verifier)])
        server.add_generic_rpc_handlers((_grpc_handlers(aio=True),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        targets.append(f"127.0.0.1:{port}")
    try:
        await asyncio.get_running_loop().run_in_executor(None, check_grpc, targets[0], targets[1], v)
    finally:
        for server in servers:
            await server.stop(None)

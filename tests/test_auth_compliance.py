"""One compliance suite for the HTTP-client integrations (google-auth's ``compliance.py`` shape).

``TestAuthCompliance`` holds every test, parametrised over every driver of the exchange
(``driver`` fixture): ``sa_token.requests.TokenAuth`` on a ``requests.Session``,
``sa_token.httpx.TokenAuth`` on ``httpx.Client`` and on ``httpx.AsyncClient``,
``sa_token.aiohttp.TokenMiddleware`` on an ``aiohttp.ClientSession``, and the ``ApiClient`` of
``sa_token.kubernetes``, ``sa_token.kubernetes.aio`` and ``sa_token.kubernetes_asyncio`` (the async
clients each on an event loop of its own). A rule that does not apply to a client (``hosts=`` for
the Kubernetes clients, which talk to one API server) is skipped for it by name. Every test talks HTTPS to a real ``FakeAPIServer`` on 127.0.0.1 that verifies the
RS256 signature, ``aud`` and ``exp`` of each token, with tokens written by ``Kubelet`` through a
real ``ProjectedVolume`` (``..data`` swap). Adapter-specific cases (seekable bodies, threads,
the event loop) follow the suite; CA rotation is in ``test_auth_ca.py``.
"""

from __future__ import annotations

import asyncio
import math
import os
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import aiohttp
import httpx
import jwt
import pytest
import requests

import sa_token.aiohttp
import sa_token.httpx
import sa_token.kubernetes
import sa_token.requests
from conftest import OPEN_THREADS as _OPEN_THREADS
from conftest import wait_for
from sa_token import TokenSource
from sa_token._flow import MAX_401_RETRIES, host_allowed, parse_hosts
from sa_token._observe import auth_retries
from sa_token.testing import Kubelet
from sa_token.testing.apiserver import FakeAPIServer

AUDIENCE = "sa-token-test"  # what the kubelet fixture's tokens carry


def jti(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


class Reply(NamedTuple):
    status: int
    history: list[int]  # statuses of earlier responses (a 401 that was retried)
    body: Any  # the parsed JSON body


class Client:
    """What the suite needs from an HTTP client; one subclass per adapter."""

    auth: object

    def get(self, url: str, *, headers: Optional[dict[str, str]] = None) -> Reply:
        raise NotImplementedError

    def post(self, url: str, body: bytes) -> Reply:
        """POST a body held in memory (replayable)."""
        raise NotImplementedError

    def post_stream(self, url: str, chunks: list[bytes]) -> Reply:
        """POST a one-shot generator body (not replayable)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _json(content: bytes) -> Any:
    import json

    try:
        return json.loads(content)
    except ValueError:
        return None


# ------------------------------------------------------------------------------ fixtures -----
@pytest.fixture
def server(token_issuer: Any) -> Iterator[FakeAPIServer]:
    with FakeAPIServer(token_issuer, audiences=[AUDIENCE]) as s:
        yield s


@pytest.fixture
def other_server(token_issuer: Any) -> Iterator[FakeAPIServer]:
    with FakeAPIServer(token_issuer, audiences=[AUDIENCE]) as s:
        yield s


@pytest.fixture
def ca_file(tmp_path: Path, server: FakeAPIServer, request: pytest.FixtureRequest) -> str:
    """A bundle trusting the server, and ``other_server`` when the test uses it (each server
    has its own trustme CA)."""
    pem = server.ca_pem
    if "other_server" in request.fixturenames:
        pem += request.getfixturevalue("other_server").ca_pem
    path = tmp_path / "bundle.pem"
    path.write_bytes(pem)
    return str(path)


@pytest.fixture
def source(kubelet: Kubelet) -> Iterator[TokenSource]:
    """A watching source: it follows each rotation within milliseconds (inotify)."""
    with TokenSource(kubelet.volume.token_path) as src:
        # inotify instances are limited per user (fs.inotify.max_user_instances): a busy machine
        # can run out, and then only the fallback timer would see rotations.
        assert src.watching, "inotify is unavailable here; these tests need it"
        yield src


@pytest.fixture
def lagging_source(kubelet: Kubelet) -> Iterator[TokenSource]:
    """A source that does not notice rotations by itself (no inotify, hourly timer): after
    ``kubelet.rotate()`` it still hands out the old token until something invalidates it."""
    with TokenSource(kubelet.volume.token_path, watch=False, refresh_interval=3600) as src:
        yield src


def short_lived(kubelet: Kubelet, life: float = 0.6) -> tuple[str, int]:
    """Rotate to a token issued ~10 minutes ago (as if the kubelet had been stuck) that expires
    within [life, life + 1) s; ``exp`` is a whole second, like the API server's NumericDate
    (PyJWT truncates a fractional one). Returns the token and its ``exp``."""
    now = time.time()
    iat, exp = int(now) - 590, math.ceil(now + life)
    return kubelet.rotate(now=iat, expiration_seconds=exp - iat), exp


def served(server: FakeAPIServer, path: str = "/echo") -> list[tuple[int, Optional[str], Optional[str]]]:
    """(status, Authorization scheme, token jti) of each request the server saw on ``path``."""
    return [(r.status, r.scheme, r.token_jti) for r in server.requests if r.path == path]


# ------------------------------------------------------------------------------ the suite ----
class Driver(NamedTuple):
    """One integration under the suite: how to make a client, and which rules apply to it."""

    name: str
    make: Callable[..., Client]  # (source, *, ca_file, hosts, server) -> Client
    features: frozenset[str]  # of ALL_FEATURES
    redirect_hops_follow_hosts: bool = False  # aiohttp runs the middleware per redirect hop

    def needs(self, feature: str) -> None:
        if feature not in self.features:
            pytest.skip(f"{self.name}: not applicable ({feature})")


# hosts=, redirects, a caller's own Authorization header, a one-shot body, a repr of the auth
ALL_FEATURES = frozenset({"hosts", "redirects", "own_header", "streaming", "repr"})
DRIVERS: list[Driver] = []  # filled below the adapters


@pytest.fixture(params=[pytest.param(i, id=name) for i, name in enumerate(
    ["requests", "httpx", "httpx-async", "aiohttp", "kubernetes", "kubernetes.aio", "kubernetes_asyncio"])])
def driver(request: pytest.FixtureRequest) -> Driver:
    d = DRIVERS[request.param]
    if d.name.startswith("kubernetes"):
        pytest.importorskip(f"{d.name}.client")
    return d


class TestAuthCompliance:
    """The rules every driver must follow (see `sa_token._flow`), for every driver."""

    @pytest.fixture
    def client_for(self, ca_file: str, driver: Driver, server: FakeAPIServer) -> Iterator[Callable[..., Client]]:
        made: list[Client] = []

        def make(source: TokenSource, hosts: Optional[list[str]] = None) -> Client:
            c = driver.make(source, ca_file=ca_file, hosts=hosts, server=server)
            made.append(c)
            return c

        yield make
        for c in made:
            c.close()

    def test_attaches_the_current_token(self, server: FakeAPIServer, kubelet: Kubelet, source: TokenSource,
                                        client_for: Callable[..., Client]) -> None:
        reply = client_for(source).get(f"{server.url}/echo")
        assert reply.status == 200
        assert reply.body["jti"] == jti(kubelet.current or "")
        assert served(server) == [(200, "Bearer", jti(kubelet.current or ""))]

    def test_each_rotation_is_used_by_the_next_request(self, server: FakeAPIServer, kubelet: Kubelet,
                                                       source: TokenSource,
                                                       client_for: Callable[..., Client]) -> None:
        client = client_for(source)
        rotated = []
        for _ in range(3):
            new = kubelet.rotate()
            rotated.append(jti(new))
            assert wait_for(lambda new=new: source.token() == new)
            reply = client.get(f"{server.url}/echo")
            assert (reply.status, reply.body["jti"]) == (200, jti(new))
        assert served(server) == [(200, "Bearer", j) for j in rotated]

    def test_401_rereads_the_file_and_retries_once_with_the_new_token(
        self, server: FakeAPIServer, kubelet: Kubelet, lagging_source: TokenSource,
        client_for: Callable[..., Client]
    ) -> None:
        old = kubelet.current or ""
        new = kubelet.rotate()
        assert lagging_source.token() == old  # it has not noticed
        server.fail_next(1)  # the server rejects the old token
        reply = client_for(lagging_source).get(f"{server.url}/echo")
        assert (reply.status, reply.history) == (200, [401])
        assert reply.body["jti"] == jti(new)
        assert served(server) == [(401, "Bearer", jti(old)), (200, "Bearer", jti(new))]

    def test_retries_are_bounded(self, server: FakeAPIServer, kubelet: Kubelet, lagging_source: TokenSource,
                                 client_for: Callable[..., Client]) -> None:
        kubelet.rotate()
        server.fail_next(10)  # a server that answers 401 whatever the token
        reply = client_for(lagging_source).get(f"{server.url}/echo")
        assert reply.status == 401
        assert reply.history == [401] * MAX_401_RETRIES
        assert len(served(server)) == 1 + MAX_401_RETRIES == 2

    def test_no_retry_when_the_file_has_no_new_token(self, server: FakeAPIServer, kubelet: Kubelet,
                                                     lagging_source: TokenSource, count_opens: Any,
                                                     client_for: Callable[..., Client]) -> None:
        client = client_for(lagging_source)
        assert client.get(f"{server.url}/echo").status == 200
        opens = count_opens(kubelet.volume.token_path)
        server.fail_next(1)
        reply = client.get(f"{server.url}/echo")
        assert (reply.status, reply.history) == (401, [])
        assert len(served(server)) == 2
        assert opens.count == 1  # the 401 made it look at the file once: same token, no retry

    def test_a_callers_authorization_header_is_left_alone(
        self, *, server: FakeAPIServer, kubelet: Kubelet, lagging_source: TokenSource, count_opens: Any,
        client_for: Callable[..., Client], driver: Driver
    ) -> None:
        driver.needs("own_header")
        own = kubelet.issuer.issue(audiences=[AUDIENCE])
        kubelet.rotate()  # a new token the auth could retry with, if it (wrongly) tried
        client = client_for(lagging_source)
        opens = count_opens(kubelet.volume.token_path)
        reply = client.get(f"{server.url}/echo", headers={"Authorization": f"Bearer {own}"})
        assert (reply.status, reply.body["jti"]) == (200, jti(own))
        server.fail_next(1)
        reply = client.get(f"{server.url}/echo", headers={"Authorization": f"Bearer {own}"})
        assert (reply.status, reply.history) == (401, [])
        assert served(server) == [(200, "Bearer", jti(own)), (401, "Bearer", jti(own))]
        assert opens.count == 0  # our source was not even consulted

    def test_hosts_limits_the_token_to_the_named_host_and_port(
        self, *, server: FakeAPIServer, other_server: FakeAPIServer, kubelet: Kubelet, lagging_source: TokenSource,
        client_for: Callable[..., Client], driver: Driver
    ) -> None:
        driver.needs("hosts")
        client = client_for(lagging_source, hosts=[f"127.0.0.1:{server.port}"])
        assert client.get(f"{server.url}/echo").status == 200
        # Same IP, another port: another service; it must not see the token, and its 401 (no
        # token) must not make the auth retry with one.
        kubelet.rotate()
        reply = client.get(f"{other_server.url}/echo")
        assert (reply.status, reply.history) == (401, [])
        assert served(other_server) == [(401, None, None)]
        # A bare host means the default port only, so not these test ports either.
        bare = client_for(lagging_source, hosts=["127.0.0.1"])
        assert bare.get(f"{server.url}/echo").status == 401
        assert served(server)[-1] == (401, None, None)

    def test_a_redirect_to_another_host_carries_no_token(
        self, *, server: FakeAPIServer, other_server: FakeAPIServer, kubelet: Kubelet,
        lagging_source: TokenSource, client_for: Callable[..., Client], driver: Driver
    ) -> None:
        driver.needs("redirects")
        # "localhost" is another host name (and port) for the client, even on the same machine.
        target = f"https://localhost:{other_server.port}/echo"
        for hosts in (None, [f"127.0.0.1:{server.port}", f"localhost:{other_server.port}"]):
            other_server.clear()
            client = client_for(lagging_source, hosts=hosts)
            kubelet.rotate()  # a fresh token is available: a wrong 401 retry would send it
            reply = client.get(f"{server.url}/redirect?to={target}")
            if hosts is not None and driver.redirect_hops_follow_hosts:
                # aiohttp runs the middleware for every hop: a host listed in hosts= gets it
                assert served(other_server)[0][:2] == (200, "Bearer"), hosts
                continue
            assert reply.status == 401  # other_server wants a token and got none
            assert served(other_server) == [(401, None, None)], hosts
            # A redirect within the same origin keeps it.
            reply = client.get(f"{server.url}/redirect?to={server.url}/echo")
            assert reply.status == 200
            assert served(server)[-1][:2] == (200, "Bearer")

    def test_a_streaming_body_is_not_replayed_the_401_is_returned(
        self, server: FakeAPIServer, kubelet: Kubelet, lagging_source: TokenSource,
        client_for: Callable[..., Client], driver: Driver
    ) -> None:
        driver.needs("streaming")
        client = client_for(lagging_source)
        new = kubelet.rotate()
        server.fail_next(1)
        reply = client.post_stream(f"{server.url}/echo", [b"a" * 1000, b"b" * 1000])
        assert (reply.status, reply.history) == (401, [])
        assert len(served(server)) == 1
        # The 401 still invalidated the old token: the next request uses the new one.
        reply = client.post_stream(f"{server.url}/echo", [b"c" * 10])
        assert (reply.status, reply.body["jti"], reply.body["body_length"]) == (200, jti(new), 10)

    def test_a_replayable_body_is_resent_intact(self, server: FakeAPIServer, kubelet: Kubelet,
                                                lagging_source: TokenSource,
                                                client_for: Callable[..., Client]) -> None:
        body = os.urandom(70_000)
        new = kubelet.rotate()
        server.fail_next(1)
        reply = client_for(lagging_source).post(f"{server.url}/echo", body)
        assert (reply.status, reply.history) == (200, [401])
        assert (reply.body["method"], reply.body["jti"], reply.body["body_length"]) == ("POST", jti(new), len(body))

    def test_live_rotations_of_short_lived_tokens(self, server: FakeAPIServer, kubelet: Kubelet,
                                                  source: TokenSource,
                                                  client_for: Callable[..., Client]) -> None:
        """Tokens that expire about a second after they are written (``short_lived``; the server
        rejects them then, see test_short_lived_tokens_are_rejected_once_expired), rotated while
        the client is in use: every request carries the token that was current."""
        client = client_for(source)
        minted = []
        for _ in range(3):
            token, _ = short_lived(kubelet)
            minted.append(token)
            assert wait_for(lambda token=token: source.token() == token)
            end = time.monotonic() + 0.2
            while time.monotonic() < end:
                reply = client.get(f"{server.url}/echo")
                assert (reply.status, reply.history, reply.body["jti"]) == (200, [], jti(token))
        seen = [j for status, _, j in served(server) if status == 200]
        assert list(dict.fromkeys(seen)) == [jti(t) for t in minted]
        assert all(status == 200 for status, _, _ in served(server))

    def test_repr_never_shows_the_token(self, kubelet: Kubelet, source: TokenSource,
                                        client_for: Callable[..., Client], driver: Driver) -> None:
        driver.needs("repr")
        text = repr(client_for(source, hosts=["API.example:6443", "[fd00::1]"]).auth)
        assert kubelet.current and kubelet.current not in text
        assert ("TokenAuth(" in text or "TokenMiddleware(" in text) and "'api.example:6443'" in text and "'[fd00::1]'" in text


# ------------------------------------------------------------------------------ adapters -----
class RequestsClient(Client):
    def __init__(self, auth: sa_token.requests.TokenAuth, ca_file: str) -> None:
        self.auth = auth
        self.session = requests.Session()
        self.session.auth = auth
        self.session.verify = ca_file
        self.session.trust_env = False

    @staticmethod
    def _reply(r: requests.Response) -> Reply:
        return Reply(r.status_code, [h.status_code for h in r.history if h.status_code == 401], _json(r.content))

    def get(self, url: str, *, headers: Optional[dict[str, str]] = None) -> Reply:
        return self._reply(self.session.get(url, headers=headers, timeout=10))

    def post(self, url: str, body: bytes) -> Reply:
        return self._reply(self.session.post(url, data=body, timeout=10))

    def post_stream(self, url: str, chunks: list[bytes]) -> Reply:
        return self._reply(self.session.post(url, data=(c for c in chunks), timeout=10))

    def close(self) -> None:
        self.session.close()


def _httpx_reply(r: httpx.Response) -> Reply:
    return Reply(r.status_code, [h.status_code for h in r.history if h.status_code == 401], _json(r.content))


class HttpxClient(Client):
    def __init__(self, auth: sa_token.httpx.TokenAuth, ca_file: str) -> None:
        self.auth = auth
        ctx = ssl.create_default_context(cafile=ca_file)
        self.client = httpx.Client(auth=auth, verify=ctx, follow_redirects=True, trust_env=False, timeout=10)

    def get(self, url: str, *, headers: Optional[dict[str, str]] = None) -> Reply:
        return _httpx_reply(self.client.get(url, headers=headers))

    def post(self, url: str, body: bytes) -> Reply:
        return _httpx_reply(self.client.post(url, content=body))

    def post_stream(self, url: str, chunks: list[bytes]) -> Reply:
        return _httpx_reply(self.client.post(url, content=(c for c in chunks)))

    def close(self) -> None:
        self.client.close()


class AsyncHttpxClient(Client):
    """An ``httpx.AsyncClient`` on an event loop of its own, so the suite can stay synchronous;
    every request runs the real ``async_auth_flow`` on that loop."""

    def __init__(self, auth: sa_token.httpx.TokenAuth, ca_file: str) -> None:
        self.auth = auth
        self.loop = asyncio.new_event_loop()
        ctx = ssl.create_default_context(cafile=ca_file)
        self.client = httpx.AsyncClient(auth=auth, verify=ctx, follow_redirects=True, trust_env=False, timeout=10)

    def _run(self, coro: Any) -> Reply:
        return _httpx_reply(self.loop.run_until_complete(coro))

    def get(self, url: str, *, headers: Optional[dict[str, str]] = None) -> Reply:
        return self._run(self.client.get(url, headers=headers))

    def post(self, url: str, body: bytes) -> Reply:
        return self._run(self.client.post(url, content=body))

    def post_stream(self, url: str, chunks: list[bytes]) -> Reply:
        async def gen() -> AsyncIterator[bytes]:
            for c in chunks:
                yield c

        return self._run(self.client.post(url, content=gen()))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


class AiohttpClient(Client):
    """An ``aiohttp.ClientSession`` with the middleware, on an event loop of its own. aiohttp
    keeps only redirects in ``history``: a retried 401 shows in the retry counter instead."""

    def __init__(self, auth: sa_token.aiohttp.TokenMiddleware, ca_file: str) -> None:
        self.auth = auth
        self.loop = asyncio.new_event_loop()
        ctx = ssl.create_default_context(cafile=ca_file)

        async def make() -> aiohttp.ClientSession:
            return aiohttp.ClientSession(middlewares=(auth,), connector=aiohttp.TCPConnector(ssl=ctx))

        self.session = self.loop.run_until_complete(make())

    def _run(self, method: str, url: str, **kwargs: Any) -> Reply:
        async def go() -> tuple[int, bytes]:
            async with self.session.request(method, url, timeout=aiohttp.ClientTimeout(total=10), **kwargs) as r:
                return r.status, await r.read()

        return _counted("aiohttp", lambda: self.loop.run_until_complete(go()))

    def get(self, url: str, *, headers: Optional[dict[str, str]] = None) -> Reply:
        return self._run("GET", url, headers=headers)

    def post(self, url: str, body: bytes) -> Reply:
        return self._run("POST", url, data=body)

    def post_stream(self, url: str, chunks: list[bytes]) -> Reply:
        async def gen() -> AsyncIterator[bytes]:
            for c in chunks:
                yield c

        return self._run("POST", url, data=gen())

    def close(self) -> None:
        self.loop.run_until_complete(self.session.close())
        self.loop.close()


def _counted(client: str, send: Callable[[], tuple[int, bytes]]) -> Reply:
    """Send; the 401s retried meanwhile (the retry counter's increase) are the history."""
    before = auth_retries().get(client, 0)
    status, content = send()
    return Reply(status, [401] * (auth_retries().get(client, 0) - before), _json(content))


def _k8s_conf(lib: str, source: TokenSource, ca_file: str, server: FakeAPIServer) -> Any:
    module = {"kubernetes": sa_token.kubernetes, "kubernetes.aio": None, "kubernetes_asyncio": None}[lib]
    if module is None:
        import importlib

        module = importlib.import_module("sa_token.kubernetes.aio" if lib == "kubernetes.aio" else "sa_token.kubernetes_asyncio")
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(server.port)}
    return module, module.load_incluster_config(source=source, ca_path=ca_file, environ=env, set_default=False,
                                                namespace_path=None)


class KubernetesClient(Client):
    """Raw requests through ``sa_token.kubernetes.ApiClient`` (both generator styles: kubernetes
    >= 37 serializes with ``param_serialize`` and answers every status; older versions raise
    ``ApiException`` for a non-2xx answer). The API server is the only host: no hosts=,
    redirects, own header or one-shot body here."""

    def __init__(self, source: TokenSource, ca_file: str, server: FakeAPIServer) -> None:
        module, conf = _k8s_conf("kubernetes", source, ca_file, server)
        self.api = module.ApiClient(conf)
        self.auth = conf.refresh_api_key_hook
        self.base = server.url

    def _send(self, method: str, url: str, body: Optional[bytes] = None) -> tuple[int, bytes]:
        from kubernetes.client.exceptions import ApiException

        path = url[len(self.base):]
        headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
        api = self.api
        try:
            if hasattr(api, "param_serialize"):
                r = api.call_api(*api.param_serialize(method, path, header_params=headers, body=body,
                                                      auth_settings=["BearerToken"]), _request_timeout=10)
                return r.status, r.read()
            r = api.call_api(path, method, header_params=headers, body=body, auth_settings=["BearerToken"],
                             _preload_content=False, _return_http_data_only=True, _request_timeout=10)
            return r.status, r.data
        except ApiException as exc:
            return exc.status, exc.body if isinstance(exc.body, bytes) else (exc.body or "").encode()

    def get(self, url: str, *, headers: Optional[dict[str, str]] = None) -> Reply:
        return _counted("kubernetes", lambda: self._send("GET", url))

    def post(self, url: str, body: bytes) -> Reply:
        return _counted("kubernetes", lambda: self._send("POST", url, body))

    def close(self) -> None:
        self.api.close()


class AsyncKubernetesClient(Client):
    """The same through ``sa_token.kubernetes.aio.ApiClient`` or
    ``sa_token.kubernetes_asyncio.ApiClient``, on an event loop of its own."""

    def __init__(self, lib: str, source: TokenSource, ca_file: str, server: FakeAPIServer) -> None:
        import importlib

        self.lib = lib
        self.exc = importlib.import_module(f"{lib}.client.exceptions").ApiException
        module, conf = _k8s_conf(lib, source, ca_file, server)
        self.auth = conf.refresh_api_key_hook
        self.base = server.url
        self.loop = asyncio.new_event_loop()

        async def make() -> Any:
            return module.ApiClient(conf)

        self.api = self.loop.run_until_complete(make())

    async def _send(self, method: str, url: str, body: Optional[bytes] = None) -> tuple[int, bytes]:
        path = url[len(self.base):]
        headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
        api = self.api
        try:
            if hasattr(api, "param_serialize"):
                params = await api.param_serialize(method, path, header_params=headers, body=body,
                                                   auth_settings=["BearerToken"])  # async: it runs the hook
                r = await api.call_api(*params, _request_timeout=10)
                return r.status, await r.read()
            r = await api.call_api(path, method, header_params=headers, body=body, auth_settings=["BearerToken"],
                                   _preload_content=False, _return_http_data_only=True, _request_timeout=10)
            return r.status, await r.read()
        except self.exc as exc:
            return exc.status, exc.body if isinstance(exc.body, bytes) else (exc.body or "").encode()

    def get(self, url: str, *, headers: Optional[dict[str, str]] = None) -> Reply:
        return _counted(self.lib, lambda: self.loop.run_until_complete(self._send("GET", url)))

    def post(self, url: str, body: bytes) -> Reply:
        return _counted(self.lib, lambda: self.loop.run_until_complete(self._send("POST", url, body)))

    def close(self) -> None:
        self.loop.run_until_complete(self.api.close())
        self.loop.close()


DRIVERS.extend([
    Driver("requests", lambda src, ca_file, hosts, server: RequestsClient(
        sa_token.requests.TokenAuth(src, hosts=hosts), ca_file), ALL_FEATURES),
    Driver("httpx", lambda src, ca_file, hosts, server: HttpxClient(
        sa_token.httpx.TokenAuth(src, hosts=hosts), ca_file), ALL_FEATURES),
    Driver("httpx-async", lambda src, ca_file, hosts, server: AsyncHttpxClient(
        sa_token.httpx.TokenAuth(src, hosts=hosts), ca_file), ALL_FEATURES),
    Driver("aiohttp", lambda src, ca_file, hosts, server: AiohttpClient(
        sa_token.aiohttp.TokenMiddleware(src, hosts=hosts), ca_file), ALL_FEATURES, redirect_hops_follow_hosts=True),
    Driver("kubernetes", lambda src, ca_file, hosts, server: KubernetesClient(src, ca_file, server), frozenset()),
    Driver("kubernetes.aio", lambda src, ca_file, hosts, server: AsyncKubernetesClient(
        "kubernetes.aio", src, ca_file, server), frozenset()),
    Driver("kubernetes_asyncio", lambda src, ca_file, hosts, server: AsyncKubernetesClient(
        "kubernetes_asyncio", src, ca_file, server), frozenset()),
])


# ------------------------------------------------------------------------------ shared rules -
@pytest.mark.parametrize(
    ("hosts", "url", "allowed"),
    [
        # a bare host: the scheme's default port only, spelled out or not
        (["api.example"], "https://api.example/x", True),
        (["api.example"], "https://api.example:443/x", True),
        (["api.example"], "http://api.example:80/x", True),
        (["api.example"], "https://api.example:6443/x", False),
        (["api.example"], "http://api.example:443/x", False),
        # host:port: exactly that port; the default port may be left out of the URL
        (["api.example:6443"], "https://api.example:6443/x", True),
        (["api.example:6443"], "https://api.example/x", False),
        (["api.example:443"], "https://api.example/x", True),
        (["api.example:443"], "http://api.example/x", False),
        # exact host names, case-insensitive; no subdomains, no look-alikes
        (["API.Example"], "https://api.EXAMPLE/x", True),
        (["api.example"], "https://evil.api.example/x", False),
        (["api.example"], "https://api.example.evil/x", False),
        (["api.example"], "https://user@evil.example/?h=api.example", False),
        # IP addresses, IPv6 with and without brackets
        (["10.0.0.1:6443"], "https://10.0.0.1:6443/", True),
        (["[fd00::1]:6443"], "https://[fd00::1]:6443/", True),
        (["fd00::1"], "https://[fd00::1]/", True),
        (["fd00::1"], "https://[fd00::1]:6443/", False),
        # several entries; a URL with no or a broken host never matches
        (["a.example", "b.example:8200"], "https://b.example:8200/", True),
        (["a.example"], "https://a.example:99999/", False),
        (["a.example"], "unix:///var/run/sock", False),
    ],
)
def test_host_matching(hosts: list[str], url: str, allowed: bool) -> None:
    assert host_allowed(url, parse_hosts(hosts)) is allowed


def test_no_hosts_means_every_host() -> None:
    assert host_allowed("https://anything.example:1/", None)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("https://api.example", "not a URL"),
        ("api.example/path", "not a URL"),
        ("api.example:0", "port must be a number"),
        ("api.example:https", "port must be a number"),
        ("[fd00::1", r"expected '\[ipv6\]'"),
        ("", "non-empty strings"),
        ("bücher.example", "punycode"),
    ],
)
def test_bad_hosts_entries_are_refused_clearly(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_hosts([entry])
    with pytest.raises(ValueError, match="at least one host"):
        parse_hosts([])


def test_short_lived_tokens_are_rejected_once_expired(server: FakeAPIServer, kubelet: Kubelet,
                                                      ca_file: str) -> None:
    """What makes test_live_rotations_of_short_lived_tokens meaningful: the server accepts such a
    token while it is current, and rejects it (expired) about a second later."""
    token, exp = short_lived(kubelet)
    headers = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{server.url}/echo", headers=headers, verify=ca_file, timeout=10).status_code == 200
    assert wait_for(lambda: time.time() > exp + 0.05, timeout=3)
    assert requests.get(f"{server.url}/echo", headers=headers, verify=ca_file, timeout=10).status_code == 401
    assert server.requests[-1].error == "ExpiredSignatureError"


# ------------------------------------------------------------------------------ requests -----
class TestRequestsBodies:
    """Which request bodies requests' TokenAuth can send again after a 401."""

    @pytest.fixture
    def post(self, server: FakeAPIServer, kubelet: Kubelet, lagging_source: TokenSource,
             ca_file: str) -> Iterator[Callable[[Any], requests.Response]]:
        session = requests.Session()
        session.auth = sa_token.requests.TokenAuth(lagging_source)

        def post(body: Any) -> requests.Response:
            kubelet.rotate()
            server.fail_next(1)
            return session.post(f"{server.url}/echo", data=body, verify=ca_file, timeout=10)

        yield post
        session.close()

    def test_str_body(self, post: Callable[[Any], requests.Response]) -> None:
        body = "päyload " * 1000
        r = post(body)
        # What requests itself sends for a str body (with urllib3 1.26: a Content-Length that
        # counts characters, not bytes, and so the server reads that many bytes).
        sent = int(requests.Request("POST", "http://x/", data=body).prepare().headers["Content-Length"])
        assert (r.status_code, [h.status_code for h in r.history], r.json()["body_length"]) == (200, [401], sent)

    def test_seekable_file_is_rewound_to_where_it_started(self, post: Callable[[Any], requests.Response],
                                                          tmp_path: Path) -> None:
        path = tmp_path / "upload.bin"
        path.write_bytes(os.urandom(50_000))
        with open(path, "rb") as f:
            f.seek(1000)  # requests sends from the current position; so must the retry
            r = post(f)
        assert (r.status_code, [h.status_code for h in r.history]) == (200, [401])
        assert r.json()["body_length"] == 49_000

    def test_unseekable_file_is_not_replayed(self, post: Callable[[Any], requests.Response],
                                             server: FakeAPIServer) -> None:
        rfd, wfd = os.pipe()
        os.write(wfd, b"x" * 1000)
        os.close(wfd)
        with open(rfd, "rb") as pipe:
            r = post(pipe)
        assert (r.status_code, r.history) == (401, [])
        assert len(served(server)) == 1


def test_requests_one_auth_shared_by_threads_and_sessions(
    server: FakeAPIServer, kubelet: Kubelet, ca_file: str, count_opens: Any
) -> None:
    """Per-request state lives in each request's hook: 16 concurrent requests from 8 threads
    and 2 sessions all recover from the same stale token, with one re-read of the file."""
    kubelet.rotate(audiences=["someone-else"])  # the server refuses this one (wrong audience)
    with TokenSource(kubelet.volume.token_path, watch=False, refresh_interval=3600) as src:
        stale = src.token()
        good = kubelet.rotate()
        auth = sa_token.requests.TokenAuth(src)
        sessions = [requests.Session(), requests.Session()]
        for s in sessions:
            s.auth, s.verify, s.trust_env = auth, ca_file, False
        opens = count_opens(kubelet.volume.token_path)
        barrier = threading.Barrier(8)
        results: list[tuple[int, list[int], str]] = []

        def work(i: int) -> None:
            barrier.wait()
            for _ in range(2):
                r = sessions[i % 2].get(f"{server.url}/echo", timeout=10)
                results.append((r.status_code, [h.status_code for h in r.history], r.json().get("jti")))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for s in sessions:
            s.close()
    assert len(results) == 16
    assert {(status, j) for status, _, j in results} == {(200, jti(good))}
    rejected = [j for status, _, j in served(server) if status == 401]
    assert rejected and set(rejected) == {jti(stale)}
    assert opens.count <= 2  # client-go's rule: 401s of requests older than the re-read don't re-read


# ------------------------------------------------------------------------------ httpx --------
def test_httpx_flow_leaves_a_callers_header_alone(source: TokenSource) -> None:
    """The generator alone, no network (httpx's own tests/test_auth.py style)."""
    auth = sa_token.httpx.TokenAuth(source)
    request = httpx.Request("GET", "https://api.example/", headers={"Authorization": "Basic abc"})
    flow = auth.sync_auth_flow(request)
    assert next(flow).headers["Authorization"] == "Basic abc"
    with pytest.raises(StopIteration):
        flow.send(httpx.Response(401, request=request))


def test_httpx_a_file_body_is_not_replayed(server: FakeAPIServer, kubelet: Kubelet,
                                           lagging_source: TokenSource, ca_file: str, tmp_path: Path) -> None:
    """httpx streams a file body and cannot rewind it (a second pass would send nothing), so a
    401 after a file upload is returned, like a generator body."""
    path = tmp_path / "upload.bin"
    path.write_bytes(b"z" * 5000)
    kubelet.rotate()
    server.fail_next(1)
    ctx = ssl.create_default_context(cafile=ca_file)
    with httpx.Client(auth=sa_token.httpx.TokenAuth(lagging_source), verify=ctx) as client, open(path, "rb") as f:
        r = client.post(f"{server.url}/echo", content=f)
    assert (r.status_code, r.history) == (401, [])
    assert len(served(server)) == 1


@pytest.mark.asyncio
async def test_httpx_async_flow_reads_the_file_off_the_event_loop(
    server: FakeAPIServer, kubelet: Kubelet, lagging_source: TokenSource, ca_file: str
) -> None:
    """When a read is due (here: after invalidate(), and after a 401), the async flow reads
    the token file in a worker thread, never on the event loop's thread."""
    path = str(kubelet.volume.token_path)
    _OPEN_THREADS[path] = []
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
        async with httpx.AsyncClient(auth=sa_token.httpx.TokenAuth(lagging_source), verify=ctx) as client:
            lagging_source.invalidate()
            assert lagging_source.token_nowait() is None
            first = await client.get(f"{server.url}/echo")
            new = kubelet.rotate()
            server.fail_next(1)
            second = await client.get(f"{server.url}/echo")
        assert first.status_code == 200
        assert (second.status_code, second.json()["jti"]) == (200, jti(new))
        assert len(_OPEN_THREADS[path]) == 2
        assert threading.get_ident() not in _OPEN_THREADS[path]
    finally:
        del _OPEN_THREADS[path]


@pytest.mark.asyncio
async def test_httpx_async_concurrent_401s_share_one_reread(
    server: FakeAPIServer, kubelet: Kubelet, ca_file: str, count_opens: Any
) -> None:
    """Ten concurrent requests on one event loop all recover from the same stale token."""
    kubelet.rotate(audiences=["someone-else"])  # the server refuses this one (wrong audience)
    with TokenSource(kubelet.volume.token_path, watch=False, refresh_interval=3600) as src:
        stale = src.token()
        good = kubelet.rotate()
        opens = count_opens(kubelet.volume.token_path)
        ctx = ssl.create_default_context(cafile=ca_file)
        async with httpx.AsyncClient(auth=sa_token.httpx.TokenAuth(src), verify=ctx) as client:
            replies = await asyncio.gather(*(client.get(f"{server.url}/echo") for _ in range(10)))
    assert {(r.status_code, r.json().get("jti")) for r in replies} == {(200, jti(good))}
    assert sorted(j for _, _, j in served(server)) == sorted([jti(stale)] * 10 + [jti(good)] * 10)
    assert opens.count <= 2

"""The asyncio integrations drive the real clients against a FakeAPIServer (TLS) across token
rotations, a CA rotation and a 401: ``sa_token.kubernetes.aio`` with the official
``kubernetes.aio`` and ``sa_token.kubernetes_asyncio`` with ``kubernetes_asyncio``, one suite."""

from __future__ import annotations

import asyncio
import copy
import importlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from _k8s_env import Cluster, make_cluster
from sa_token import TokenSource
from sa_token.kubernetes._async import AsyncTokenHook
from sa_token.testing import TokenIssuer

Lib = Any  # a SimpleNamespace: client, ConfigException, ApiClient, NotInClusterError, load_incluster_config


@pytest.fixture(params=["kubernetes.aio", "kubernetes_asyncio"])
def lib(request: pytest.FixtureRequest) -> Lib:
    client = pytest.importorskip(f"{request.param}.client")
    config_exception = importlib.import_module(f"{request.param}.config.config_exception")
    ours = importlib.import_module(
        "sa_token.kubernetes.aio" if request.param == "kubernetes.aio" else "sa_token.kubernetes_asyncio"
    )
    return SimpleNamespace(
        client=client,
        ConfigException=config_exception.ConfigException,
        ApiClient=ours.ApiClient,
        NotInClusterError=ours.NotInClusterError,
        load_incluster_config=ours.load_incluster_config,
    )


@pytest.fixture
def cluster(tmp_path: Path, token_issuer: TokenIssuer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    yield from make_cluster(tmp_path, token_issuer, monkeypatch)


@pytest.fixture(autouse=True)
def restore_defaults(lib: Lib) -> Iterator[None]:
    conf = lib.client.Configuration._default
    yield
    lib.client.Configuration._default = conf


async def until(cond: object, timeout: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if cond():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.01)
    return bool(cond())  # type: ignore[operator]


@pytest.mark.asyncio
async def test_three_rotations_list_pods_and_version(lib: Lib, cluster: Cluster) -> None:
    conf = lib.load_incluster_config(
        token_path=cluster.token_path, ca_path=cluster.ca_path, namespace_path=cluster.volume.path("namespace")
    )
    assert conf.namespace == "team-a"
    assert lib.client.Configuration._default is not None  # set_default by default
    source: TokenSource = conf.refresh_api_key_hook.source
    async with lib.ApiClient() as api:  # from the default configuration's deep copy
        assert api.configuration.refresh_api_key_hook is conf.refresh_api_key_hook
        v1 = lib.client.CoreV1Api(api)
        for _ in range(3):
            expected = cluster.rotate()
            assert await until(lambda: source.current().claims["jti"] == expected)  # noqa: B023
            pods = await v1.list_namespaced_pod("team-a")
            assert [p.metadata.name for p in pods.items] == ["app-0", "app-1"]
            version = await lib.client.VersionApi(api).get_code()
            assert version.git_version.startswith("v1.")
            seen = cluster.server.requests[-2:]
            assert [(r.status, r.token_jti, r.scheme) for r in seen] == [(200, expected, "Bearer")] * 2


@pytest.mark.asyncio
async def test_hook_needs_no_await_while_cached_and_reads_off_loop(lib: Lib, cluster: Cluster) -> None:
    conf = lib.load_incluster_config(
        token_path=cluster.token_path, ca_path=cluster.ca_path, set_default=False,
        source=TokenSource(cluster.token_path, watch=False),
    )
    hook = conf.refresh_api_key_hook
    assert isinstance(hook, AsyncTokenHook)
    assert hook(conf) is None  # cached: no coroutine
    new = cluster.rotate()
    hook.source.invalidate()  # a re-read is due: the hook must hand back a coroutine
    result = hook(conf)
    assert asyncio.iscoroutine(result)
    await result
    assert await conf.get_api_key_with_prefix("BearerToken") == "Bearer " + cluster.kubelet.current
    assert hook.source.current().claims["jti"] == new
    assert copy.deepcopy(conf).refresh_api_key_hook is hook


@pytest.mark.asyncio
async def test_ca_rotation_builds_a_new_session_with_the_new_ca(lib: Lib, cluster: Cluster) -> None:
    conf = lib.load_incluster_config(token_path=cluster.token_path, ca_path=cluster.ca_path, set_default=False)
    ca = conf.refresh_api_key_hook.ca
    stock = lib.client.ApiClient(copy.deepcopy(conf))  # builds its SSLContext once, now
    async with lib.ApiClient(conf) as api, stock:
        v1 = lib.client.CoreV1Api(api)
        await v1.list_namespaced_pod("team-a")
        old_rest = api.rest_client
        cluster.rotate_ca()
        assert await until(lambda: ca.generation == 2)
        await v1.list_namespaced_pod("team-a")  # on a new session: a new TLS connection
        assert api.rest_client is not old_rest
        assert cluster.server.requests[-1].status == 200
        assert cluster.server.handshake_failures == 0
        # the stock client still trusts only the old CA: its first connection fails
        with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
            await lib.client.CoreV1Api(stock).list_namespaced_pod("team-a")


@pytest.mark.asyncio
async def test_401_is_retried_once_with_a_re_read_token(lib: Lib, cluster: Cluster) -> None:
    conf = lib.load_incluster_config(
        token_path=cluster.token_path, ca_path=cluster.ca_path, set_default=False,
        source=TokenSource(cluster.token_path, watch=False),  # no inotify: only the 401 notices
    )
    async with lib.ApiClient(conf) as api:
        new = cluster.rotate()
        cluster.server.clear()
        cluster.server.fail_next(1)
        pods = await lib.client.CoreV1Api(api).list_namespaced_pod("team-a")
        assert len(pods.items) == 2
        assert [(r.status, r.token_jti == new) for r in cluster.server.requests] == [(401, False), (200, True)]
        cluster.rotate()
        cluster.server.clear()
        cluster.server.fail_next(2)
        with pytest.raises(lib.client.ApiException) as info:
            await lib.client.VersionApi(api).get_code()
        assert info.value.status == 401
        assert len(cluster.server.requests) == 2  # one retry, not more
        cluster.server.clear()
        cluster.server.fail_next(1)  # no newer token in the file: the 401 stands
        with pytest.raises(lib.client.ApiException):
            await lib.client.VersionApi(api).get_code()
        assert len(cluster.server.requests) == 1


def test_out_of_cluster_and_ipv6(lib: Lib, cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    conf = lib.load_incluster_config(token_path=cluster.token_path, ca_path=cluster.ca_path, set_default=False)
    assert conf.host == f"https://[fd00::1]:{cluster.server.port}"
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT")
    with pytest.raises(lib.NotInClusterError, match="KUBERNETES_SERVICE_PORT is not set") as info:
        lib.load_incluster_config(token_path=cluster.token_path, ca_path=cluster.ca_path)
    assert isinstance(info.value, lib.ConfigException)

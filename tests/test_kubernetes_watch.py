"""Watch streams across token rotations: ``kubernetes.watch.Watch().stream`` and the watches of
``kubernetes.aio`` and ``kubernetes_asyncio``, against the FakeAPIServer's ``?watch=true``
streams. The server ends each stream (``close_watches()``, as its watch timeout or a restart
does); the client reconnects from the last resourceVersion. A reconnect after a rotation must
carry the new token; a reconnect answered 401 is retried once with the re-read token."""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client as k8s
import kubernetes.watch
import pytest
import urllib3

from _k8s_env import Cluster, make_cluster
from conftest import wait_for
from sa_token import TokenSource
from sa_token.kubernetes import ApiClient, load_incluster_config
from sa_token.testing import TokenIssuer


@pytest.fixture
def cluster(tmp_path: Path, token_issuer: TokenIssuer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    yield from make_cluster(tmp_path, token_issuer, monkeypatch)


def pod(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "team-a"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}


def watches(cluster: Cluster) -> list[tuple[int, str]]:
    """(status, token jti) of every watch request, in order."""
    return [(r.status, r.token_jti or "") for r in cluster.server.requests if r.path == "/api/v1/namespaces/team-a/pods"]


def scenario_steps(cluster: Cluster, source: TokenSource, names: list[str]) -> list[tuple[int, str]]:
    """What both tests do while a watch is open, as (expected status, expected jti) per connect.
    ``names`` is filled by the watch; returns the expected watch requests."""
    first = source.current().claims["jti"]
    cluster.server.objects.put("pods", pod("p1"))
    assert wait_for(lambda: names == ["p1"])
    # 1. A rotation the source notices; the server ends the stream; the reconnect uses it.
    second = cluster.rotate()
    source.invalidate()  # what inotify or the timer does; this source watches neither
    cluster.server.objects.close_watches()
    assert wait_for(lambda: cluster.server.objects.watches_served == 2)  # reconnected
    cluster.server.objects.put("pods", pod("p2"))
    assert wait_for(lambda: names == ["p1", "p2"])
    # 2. A rotation the source has not noticed, and a reconnect the server answers 401: the
    #    client re-reads the file and reconnects with the new token.
    third = cluster.rotate()
    cluster.server.fail_next(1)
    cluster.server.objects.close_watches()
    assert wait_for(lambda: cluster.server.objects.watches_served == 3)  # the 401, then the retry
    cluster.server.objects.put("pods", pod("p3"))
    assert wait_for(lambda: names == ["p1", "p2", "p3"])
    return [(200, first), (200, second), (401, second), (200, third)]


def end_streams(cluster: Cluster) -> bool:
    cluster.server.objects.close_watches()
    return True


def test_sync_watch_reconnects_with_rotated_tokens(cluster: Cluster) -> None:
    source = TokenSource(cluster.token_path, watch=False, refresh_interval=3600)
    conf = load_incluster_config(token_path=cluster.token_path, ca_path=cluster.ca_path, source=source,
                                 set_default=False)
    names: list[str] = []
    watch = kubernetes.watch.Watch()
    with ApiClient(conf) as api:
        v1 = k8s.CoreV1Api(api)

        def run() -> None:
            try:
                for event in watch.stream(v1.list_namespaced_pod, "team-a", resource_version="1"):
                    names.append(event["object"].metadata.name)
            except urllib3.exceptions.ProtocolError:
                pass  # watch.stop() shuts the stream's socket down

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert wait_for(lambda: cluster.server.objects.watches_served == 1)
        expected = scenario_steps(cluster, source, names)
        watch.stop()
        assert wait_for(lambda: end_streams(cluster) and not thread.is_alive(), timeout=10)
    assert watches(cluster)[:4] == expected


@pytest.mark.parametrize("name", ["kubernetes.aio", "kubernetes_asyncio"])
@pytest.mark.asyncio
async def test_async_watch_reconnects_with_rotated_tokens(name: str, cluster: Cluster) -> None:
    client = pytest.importorskip(f"{name}.client")
    watch_module = importlib.import_module(f"{name}.watch")
    ours = importlib.import_module("sa_token.kubernetes.aio" if name == "kubernetes.aio" else "sa_token.kubernetes_asyncio")
    source = TokenSource(cluster.token_path, watch=False, refresh_interval=3600)
    conf = ours.load_incluster_config(token_path=cluster.token_path, ca_path=cluster.ca_path, source=source,
                                      set_default=False)
    names: list[str] = []
    async with ours.ApiClient(conf) as api:
        v1 = client.CoreV1Api(api)
        watch = watch_module.Watch()

        async def run() -> None:
            async for event in watch.stream(v1.list_namespaced_pod, "team-a", resource_version="1"):
                names.append(event["object"].metadata.name)

        task = asyncio.ensure_future(run())
        loop = asyncio.get_running_loop()
        # The scenario polls with time.sleep: run it in a thread so the watch keeps going here.
        await loop.run_in_executor(None, lambda: wait_for(lambda: cluster.server.objects.watches_served == 1))
        expected = await loop.run_in_executor(None, scenario_steps, cluster, source, names)
        watch.stop()
        for _ in range(100):  # a reconnect may be under way: end streams until the task is done
            if task.done():
                break
            cluster.server.objects.close_watches()
            await asyncio.sleep(0.05)
        await asyncio.wait_for(task, 5)
        await watch.close()
    assert watches(cluster)[:4] == expected

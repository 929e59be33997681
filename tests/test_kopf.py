"""A real kopf operator (in-process, standalone) against the FakeAPIServer, logged in by
``sa_token.kopf``, with short-lived tokens that the kubelet rotates while it runs: it handles the
events of one resource across several rotations and a rejected token, and never runs out of
credentials (nolar/kopf#926)."""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

kopf = pytest.importorskip("kopf")

import sa_token.kopf  # noqa: E402
from _k8s_env import API_AUDIENCE, Cluster, make_cluster  # noqa: E402
from conftest import wait_for  # noqa: E402
from sa_token import TokenSource  # noqa: E402
from sa_token.testing import TokenIssuer  # noqa: E402

# Tokens live 60 s: the kubelet-style rotation point (80%) is 48 s after issue and expiry 12 s
# later. Each is minted 45.5 s "ago", and the kubelet below writes the next one at the rotation
# point, 2.5 s after the last: kopf must log in again at each, and the server refuses a token
# kept 14.5 s after it was written.
LIFE = 60.0
AGE = 45.5
EVERY = LIFE * 0.8 - AGE


def jti(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


@pytest.fixture
def cluster(tmp_path: Path, token_issuer: TokenIssuer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    yield from make_cluster(tmp_path, token_issuer, monkeypatch)


def rotate(cluster: Cluster) -> str:
    return jti(cluster.kubelet.rotate(now=time.time() - AGE, expiration_seconds=LIFE))


class Rotator:
    """The kubelet's loop: a new token at each token's rotation point."""

    def __init__(self, cluster: Cluster) -> None:
        self.minted = [rotate(cluster)]
        self.stop = threading.Event()

        def run() -> None:
            while not self.stop.wait(EVERY):
                self.minted.append(rotate(cluster))

        self.thread = threading.Thread(target=run, name="kubelet", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


class Operator:
    """kopf.operator() on an event loop in a thread of its own."""

    def __init__(self, handler: Any) -> None:
        self.seen: list[str] = []
        registry = kopf.OperatorRegistry()
        kopf.on.login(registry=registry)(handler)

        @kopf.on.event("configmaps", registry=registry)
        def on_event(type: str, name: str, **_: Any) -> None:
            if type != "DELETED":  # None for the objects of the initial list
                self.seen.append(name)

        settings = kopf.OperatorSettings()
        settings.posting.enabled = False
        # kopf asks the server to end its watches after this long (timeoutSeconds); it uses its
        # credentials' expiration when it reconnects (the real server ends watches in 30-60 min).
        settings.watching.server_timeout = 1
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.error: list[BaseException] = []

        # One watch stream: no namespace or resource observers. kopf (1.45) closes its HTTP
        # session when it drops credentials (expired or rejected); another stream of that session
        # that starts a read at that instant gets aiohttp's RuntimeError("Connection closed."),
        # which kopf's watcher does not catch, and the operator exits: a race of kopf's own,
        # whatever the login handler (docs/integrations/kopf.md), that this test must not hit.
        settings.scanning.disabled = True

        def run() -> None:
            try:
                asyncio.run(kopf.operator(registry=registry, settings=settings, standalone=True,
                                          namespaces=["team-a"], stop_flag=self.stop, ready_flag=self.ready))
            except BaseException as exc:  # the test asserts there is none
                self.error.append(exc)

        self.thread = threading.Thread(target=run, name="kopf", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)


def configmap(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "team-a"}, "data": {"k": name}}


@pytest.mark.slow
def test_operator_handles_events_across_rotations_and_a_rejection(
    cluster: Cluster, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO)
    # kopf may log in at a rotation point just before the kubelet wrote the next token: the
    # handler then looks again RECHECK seconds later (30 s in production; 0.5 s at this pace).
    monkeypatch.setattr(sa_token.kopf, "RECHECK", 0.5)
    store = cluster.server.objects
    store.put("namespaces", {"metadata": {"name": "team-a"}})  # kopf looks for it
    kubelet = Rotator(cluster)
    source = TokenSource(cluster.token_path)
    operator = Operator(sa_token.kopf.login_handler(source=source, ca_path=cluster.ca_path))
    try:
        assert wait_for(operator.ready.is_set, timeout=10)

        def used() -> list[str]:
            seen = {r.token_jti for r in cluster.server.requests if r.authorized}
            return [j for j in kubelet.minted if j in seen]

        i = 0
        while len(used()) < 4 and i < 40:  # the first token and three rotations, each used
            store.put("configmaps", configmap(f"cm-{i}"))
            assert wait_for(lambda i=i: f"cm-{i}" in operator.seen, timeout=10), (i, operator.seen)
            i += 1
            time.sleep(0.3)
        assert len(used()) >= 4, (used(), kubelet.minted)
        kubelet.close()
        # A token whose rotation point is far: kopf's next login is a reaction to the 401 below.
        final = jti(cluster.kubelet.rotate(now=time.time() - 10, expiration_seconds=LIFE))
        assert wait_for(lambda: any(r.token_jti == final for r in cluster.server.requests), timeout=10)
        # A rejection while the file holds the same token: kopf invalidates its credentials and
        # logs in again; the handler waits (backoff), returns the token, and the operator goes on.
        cluster.server.fail_next(1)
        store.close_watches()
        # Then an event kopf can see only with the credentials it has after the 401 (a watch
        # request sent just before fail_next may start streaming just after close_watches).
        assert wait_for(lambda: any(r.error == "forced" for r in cluster.server.requests), timeout=10)
        store.put("configmaps", configmap("after-401"))
        assert wait_for(lambda: "after-401" in operator.seen, timeout=30), operator.seen
        assert operator.thread.is_alive() and not operator.error
    finally:
        kubelet.close()
        operator.close()
        source.close()
    requests = cluster.server.requests
    assert any(r.error == "forced" for r in requests)
    assert not [r for r in requests if r.status == 401 and r.error != "forced"]  # never a stale token
    assert "Ran out of valid credentials" not in caplog.text
    assert "rejected the token" in caplog.text  # the handler's backoff warning
    assert not [r for r in requests if r.status == 404], [r.path for r in requests if r.status == 404]


def test_login_returns_connection_info_with_expiration_at_the_rotation_point(cluster: Cluster) -> None:
    token = cluster.kubelet.rotate(now=time.time() - 100, expiration_seconds=600)
    with TokenSource(cluster.token_path) as source:
        handler = sa_token.kopf.login_handler(source=source, ca_path=cluster.ca_path)
        first = asyncio.run(handler())
        second = asyncio.run(handler())
    assert first.token == token and first.scheme == "Bearer"
    assert first.server == f"https://127.0.0.1:{cluster.server.port}"
    assert base64.b64decode(first.ca_data) == cluster.server.ca_pem  # as kubeconfig's CA data
    assert first.default_namespace == "team-a"
    due = source.current().rotation_due_at
    assert due is not None and abs((first.expiration - due).total_seconds()) < 0.01
    # Called again before the first expired, with the same token in the file: kopf's answer to a
    # 401. The handler backs off (1 s), then returns credentials kopf does not refuse: never equal.
    assert first != second and second.token == token
    assert "ey" not in repr(handler.handler)


def test_outside_a_pod_the_login_fails_with_a_kopf_login_error(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    handler = sa_token.kopf.login_handler(token_path=cluster.token_path, ca_path=cluster.ca_path)
    with pytest.raises(kopf.LoginError, match="KUBERNETES_SERVICE_HOST is not set"):
        asyncio.run(handler())


assert API_AUDIENCE  # the kubelet of make_cluster mints for the API server's audience

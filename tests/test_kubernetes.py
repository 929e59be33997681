"""sa_token.kubernetes drives the real ``kubernetes`` client against a FakeAPIServer (TLS) across
token rotations, a CA rotation, a bad CA file and a 401."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import kubernetes.client as k8s
import pytest
import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from _k8s_env import Cluster, make_cluster
from conftest import wait_for
from sa_token import TokenError, TokenFileError, TokenSource
from sa_token._observe import auth_retries
from sa_token.kubernetes import ApiClient, NotInClusterError, load_incluster_config, read_namespace
from sa_token.testing import TokenIssuer


@pytest.fixture
def cluster(tmp_path: Path, token_issuer: TokenIssuer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    yield from make_cluster(tmp_path, token_issuer, monkeypatch)


@pytest.fixture(autouse=True)
def restore_defaults() -> Iterator[None]:
    """load_incluster_config() sets the kubernetes defaults: put the previous ones back."""
    conf, client = k8s.Configuration._default, getattr(k8s.ApiClient, "_default", None)
    yield
    if hasattr(k8s.ApiClient, "set_default"):  # kubernetes >= 37
        if k8s.ApiClient._default is not client and k8s.ApiClient._default is not None:
            k8s.ApiClient._default.close()
        k8s.ApiClient._default = client
    k8s.Configuration._default = conf


def hook_of(conf: k8s.Configuration) -> object:
    return conf.refresh_api_key_hook


def test_three_rotations_reach_every_client(cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    conf = load_incluster_config(token_path=cluster.token_path, ca_path=cluster.ca_path)
    source: TokenSource = conf.refresh_api_key_hook.source
    assert conf.host == f"https://127.0.0.1:{cluster.server.port}"
    if hasattr(k8s.ApiClient, "set_default"):  # kubernetes >= 37
        assert isinstance(k8s.ApiClient.get_default(), ApiClient)
        v1 = k8s.CoreV1Api()  # the default ApiClient set by load_incluster_config
    else:  # no default ApiClient to install: said out loud, not lost silently
        assert "has no default ApiClient" in caplog.text
        v1 = k8s.CoreV1Api(ApiClient())
    plain = k8s.ApiClient()  # a plain client over a deep copy of the default configuration
    try:
        for _ in range(3):
            expected = cluster.rotate()
            assert wait_for(lambda: source.current().claims["jti"] == expected)  # noqa: B023
            pods = v1.list_namespaced_pod("team-a")
            assert [p.metadata.name for p in pods.items] == ["app-0", "app-1"]
            assert k8s.VersionApi().get_code().git_version.startswith("v1.")
            k8s.CoreV1Api(plain).list_namespaced_pod("team-a")
            seen = cluster.server.requests[-3:]
            assert [(r.status, r.token_jti, r.scheme) for r in seen] == [(200, expected, "Bearer")] * 3
    finally:
        plain.close()
    assert all(r.authorized for r in cluster.server.requests)


def test_hook_is_shared_by_deep_copies_and_writes_both_keys(cluster: Cluster) -> None:
    conf = load_incluster_config(token_path=cluster.token_path, ca_path=cluster.ca_path, set_default=False)
    clone = copy.deepcopy(conf)
    assert clone.refresh_api_key_hook is conf.refresh_api_key_hook
    cluster.rotate()
    source = conf.refresh_api_key_hook.source
    assert wait_for(lambda: clone.get_api_key_with_prefix("BearerToken") == "Bearer " + source.token())
    assert clone.api_key["authorization"] == clone.api_key["BearerToken"]
    assert clone.auth_settings()["BearerToken"]["value"].startswith("Bearer ey")
    assert k8s.Configuration._default is None or k8s.Configuration._default.host != conf.host
    assert "ey" not in repr(conf.refresh_api_key_hook)  # no token in the hook's repr


def test_ca_rotation_new_connections_verify_with_the_new_ca(cluster: Cluster) -> None:
    conf = load_incluster_config(token_path=cluster.token_path, ca_path=cluster.ca_path, set_default=False)
    ca = conf.refresh_api_key_hook.ca
    with ApiClient(conf) as api:
        v1 = k8s.CoreV1Api(api)
        v1.list_namespaced_pod("team-a")
        old_ctx = api.rest_client.pool_manager.connection_pool_kw["ssl_context"]
        new_pem = cluster.rotate_ca()
        assert wait_for(lambda: ca.generation == 2)
        assert ca.pem == new_pem
        v1.list_namespaced_pod("team-a")
        # new pools verify with the new bundle's context (and the old pools were dropped)
        pinned = api.rest_client.pool_manager.connection_pool_kw["ssl_context"]
        assert pinned is not old_ctx
        if urllib3.__version__ >= "2":  # the bundle's own context (urllib3 1.26: one made from its PEM)
            assert pinned is ca.ssl_context()
        api.rest_client.pool_manager.clear()  # so the next request must open a new connection
        v1.list_namespaced_pod("team-a")
        assert cluster.server.requests[-1].status == 200
        assert cluster.server.handshake_failures == 0


def test_garbage_ca_file_keeps_the_old_ca_for_new_connections(cluster: Cluster) -> None:
    conf = load_incluster_config(token_path=cluster.token_path, ca_path=cluster.ca_path, set_default=False)
    with ApiClient(conf) as ours, k8s.ApiClient(copy.deepcopy(conf)) as plain:
        k8s.CoreV1Api(ours).list_namespaced_pod("team-a")
        k8s.CoreV1Api(plain).list_namespaced_pod("team-a")
        cluster.volume.rotate(cluster.kubelet.mint(), **{"ca.crt": b"-----BEGIN CERTIFICATE-----\ngarbage\n"})
        conf.refresh_api_key_hook.ca.refresh()
        ours.rest_client.pool_manager.clear()  # force new connections
        plain.rest_client.pool_manager.clear()
        assert k8s.CoreV1Api(ours).list_namespaced_pod("team-a").items
        # the stock client hands urllib3 the path, which it re-reads for the new connection:
        with pytest.raises(urllib3.exceptions.MaxRetryError, match="SSLError"):
            k8s.CoreV1Api(plain).list_namespaced_pod("team-a", _request_timeout=5)


def test_401_is_retried_once_with_a_re_read_token(cluster: Cluster) -> None:
    conf = load_incluster_config(
        token_path=cluster.token_path, ca_path=cluster.ca_path, set_default=False,
        source=TokenSource(cluster.token_path, watch=False),  # no inotify: only the 401 notices
    )
    retries = auth_retries().get("kubernetes", 0)
    with ApiClient(conf) as api:
        v1 = k8s.CoreV1Api(api)
        new = cluster.rotate()
        cluster.server.clear()
        cluster.server.fail_next(1)
        assert len(v1.list_namespaced_pod("team-a").items) == 2
        assert [(r.status, r.error) for r in cluster.server.requests] == [(401, "forced"), (200, None)]
        assert cluster.server.requests[-1].token_jti == new
        assert auth_retries()["kubernetes"] == retries + 1
        cluster.rotate()
        cluster.server.clear()
        cluster.server.fail_next(2)
        with pytest.raises(ApiException) as info:
            k8s.VersionApi(api).get_code()
        assert info.value.status == 401
        assert len(cluster.server.requests) == 2  # one retry, not more
        # the file has no newer token: the 401 is the answer, nothing is sent again
        cluster.server.clear()
        cluster.server.fail_next(1)
        with pytest.raises(ApiException):
            k8s.VersionApi(api).get_code()
        assert len(cluster.server.requests) == 1


def test_401_retry_sends_a_token_rotated_meanwhile(cluster: Cluster) -> None:
    conf = load_incluster_config(
        token_path=cluster.token_path, ca_path=cluster.ca_path, set_default=False,
        source=TokenSource(cluster.token_path, watch=False),  # no inotify: only the 401 notices
    )
    with ApiClient(conf) as api:
        k8s.CoreV1Api(api).list_namespaced_pod("team-a")
        new = cluster.rotate()
        cluster.server.clear()
        cluster.server.fail_next(1)
        k8s.CoreV1Api(api).list_namespaced_pod("team-a")
        assert cluster.server.requests[-1].token_jti == new


def test_out_of_cluster_errors(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(NotInClusterError, match="KUBERNETES_SERVICE_HOST is not set") as info:
        load_incluster_config(token_path=cluster.token_path, ca_path=cluster.ca_path)
    assert isinstance(info.value, ConfigException)  # the usual kubeconfig fallback still catches it
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", " ")
    with pytest.raises(NotInClusterError, match="KUBERNETES_SERVICE_HOST is empty"):
        load_incluster_config(token_path=cluster.token_path, ca_path=cluster.ca_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    missing = cluster.volume.directory / "nope"
    with pytest.raises(NotInClusterError, match=f"token file {missing} does not exist"):
        load_incluster_config(token_path=missing, ca_path=cluster.ca_path)
    with pytest.raises(NotInClusterError, match=f"CA file {missing} does not exist"):
        load_incluster_config(token_path=cluster.token_path, ca_path=missing)
    # a file that exists but is unusable is a configuration error, not "outside a cluster"
    bad = cluster.volume.directory / "bad"
    bad.write_text("not a jwt")
    with pytest.raises(TokenError) as err:
        load_incluster_config(token_path=bad, ca_path=cluster.ca_path)
    assert not isinstance(err.value, ConfigException)


@pytest.mark.parametrize(
    ("host", "url"),
    [("fd00::1", "https://[fd00::1]:6443"), ("fe80::1%eth0", "https://[fe80::1%eth0]:6443"),
     ("10.96.0.1", "https://10.96.0.1:6443")],
)
def test_ipv6_hosts_are_bracketed(cluster: Cluster, monkeypatch: pytest.MonkeyPatch, host: str, url: str) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    conf = load_incluster_config(token_path=cluster.token_path, ca_path=cluster.ca_path, set_default=False)
    assert conf.host == url


def test_read_namespace(cluster: Cluster) -> None:
    assert read_namespace(cluster.volume.path("namespace")) == "team-a"
    with pytest.raises(TokenFileError, match="does not exist"):
        read_namespace(cluster.volume.directory / "missing")
    bad = cluster.volume.directory / "ns-bad"
    bad.write_text("Not_A_Namespace\n")
    with pytest.raises(TokenFileError, match="does not hold a namespace name"):
        read_namespace(bad)


def test_namespace_path_sets_configuration_namespace(cluster: Cluster) -> None:
    ns_path = cluster.volume.path("namespace")
    conf = load_incluster_config(
        token_path=cluster.token_path, ca_path=cluster.ca_path, namespace_path=ns_path, set_default=False
    )
    assert conf.namespace == "team-a"
    conf = load_incluster_config(
        token_path=cluster.token_path,
        ca_path=cluster.ca_path,
        namespace_path=cluster.volume.directory / "missing",
        set_default=False,
    )
    assert conf.namespace is None  # custom volumes often have no namespace file
    bad = cluster.volume.directory / "ns-bad"
    bad.write_text("Not_A_Namespace\n")
    with pytest.raises(TokenFileError, match="does not hold a namespace name"):
        load_incluster_config(
            token_path=cluster.token_path, ca_path=cluster.ca_path, namespace_path=bad, set_default=False
        )


def test_namespace_is_read_next_to_a_custom_token(cluster: Cluster, tmp_path: Path) -> None:
    """The README's snippet with a projected volume of its own: the namespace file next to the
    token is found (the kube-api-access path does not exist here); an explicit path still wins."""
    assert cluster.volume.path("namespace").exists()  # the kubelet wrote "team-a" beside the token
    conf = load_incluster_config(token_path=cluster.token_path, ca_path=cluster.ca_path, set_default=False)
    assert conf.namespace == "team-a"
    other = tmp_path / "other-namespace"
    other.write_text("team-b\n")
    conf = load_incluster_config(token_path=cluster.token_path, ca_path=cluster.ca_path, set_default=False,
                                 namespace_path=other)
    assert conf.namespace == "team-b"
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "token").write_text(cluster.kubelet.current or "")
    conf = load_incluster_config(token_path=bare / "token", ca_path=cluster.ca_path, set_default=False)
    assert conf.namespace is None  # nothing beside it, and no kube-api-access volume on this machine

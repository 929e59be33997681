"""Every example in examples/ runs, as a real process, against the demo environment: a
ProjectedVolume rotated by a simulated kubelet and a FakeAPIServer that verifies each token."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest

from conftest import wait_for
from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer, assert_no_token
from sa_token.testing.apiserver import FakeAPIServer
from sa_token.testing.openbao import OpenBaoServer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
# Short-lived tokens: minted AGE seconds ago with a 600 s lifetime (the minimum the API allows),
# so each expires 10 s after it is written. A client that kept an old token would be rejected.
AGE = 592
LIFETIME = 600


def jti(token: str) -> str:
    value: str = jwt.decode(token, options={"verify_signature": False})["jti"]
    return value


@dataclass
class Env:
    server: FakeAPIServer
    kubelet: Kubelet
    volume: ProjectedVolume
    ca_file: str

    def rotate(self) -> str:
        return jti(self.kubelet.rotate(now=time.time() - AGE, expiration_seconds=LIFETIME))

    @property
    def tokens(self) -> list[str]:
        return self._tokens

    def __post_init__(self) -> None:
        self._tokens: list[str] = []
        self.kubelet.on_rotate = self._tokens.append


def make_env(tmp_path: Path, issuer: TokenIssuer, audience: str, token_key: str = "token") -> Iterator[Env]:
    with FakeAPIServer(issuer, audiences=[audience]) as server:
        volume = ProjectedVolume(tmp_path / "volume", token_key=token_key)
        kubelet = Kubelet(volume, issuer, audiences=[audience], ca_pem=server.ca_pem, namespace="payments")
        env = Env(server, kubelet, volume, str(volume.path("ca.crt")))
        env.rotate()
        yield env
        kubelet.stop()


@pytest.fixture
def api_env(tmp_path: Path, token_issuer: TokenIssuer) -> Iterator[Env]:
    yield from make_env(tmp_path, token_issuer, API_AUDIENCE)


def run_example(
    name: str, *args: str, env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env}
    full_env.pop("REQUESTS_CA_BUNDLE", None)  # the examples pass the volume's CA explicitly
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


# ----------------------------------------------------------------------- the seed scenario -
def test_vault_pod_yaml_is_a_valid_projected_token_pod() -> None:
    yaml = pytest.importorskip("yaml")  # PyYAML comes with the kubernetes package
    docs = list(yaml.safe_load_all((EXAMPLES / "vault-pod.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ServiceAccount", "Pod"}
    sa, pod = kinds["ServiceAccount"], kinds["Pod"]
    assert pod["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["metadata"]["namespace"] == sa["metadata"]["namespace"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    (source,) = volumes["vault-token"]["projected"]["sources"]
    sat = source["serviceAccountToken"]
    assert sat == {"audience": "vault", "expirationSeconds": 7200, "path": "vault-token"}
    assert sat["expirationSeconds"] >= 600  # the API's minimum
    (container,) = pod["spec"]["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert set(mounts) == set(volumes)
    assert all("subPath" not in m for m in mounts.values())  # a subPath mount would never rotate
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TOKEN_PATH"] == f"{mounts['vault-token']['mountPath']}/{sat['path']}"
    assert env["VAULT_CACERT"].startswith(mounts["vault-ca"]["mountPath"] + "/")
    assert env["VAULT_ADDR"].startswith("https://") and env["VAULT_ROLE"] == sa["metadata"]["name"]
    assert container["command"][-1].endswith("vault_kv.py")
    assert (EXAMPLES / Path(container["command"][-1]).name).exists()


def _vault_env(openbao: OpenBaoServer, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["HOME"] = str(tmp_path / "home")  # hvac would read ~/.vault-token
    env["VAULT_ADDR"] = openbao.url
    return env


@pytest.mark.slow
def test_vault_kv_example_reads_across_rotations(openbao: OpenBaoServer, tmp_path: Path, token_issuer: TokenIssuer) -> None:
    pytest.importorskip("hvac")
    openbao.add_policy("payments", 'path "secret/data/db" { capabilities = ["read"] }')
    openbao.add_role("payments", namespace="payments", service_account="payments", policies=["payments"],
                     token_ttl=2, token_max_ttl=6)
    openbao.write_secret("db", {"username": "app", "password": "s3cret"})
    volume = ProjectedVolume(tmp_path / "tokens", token_key="vault-token")
    tokens: list[str] = []
    kubelet = Kubelet(volume, token_issuer, audiences=["vault"], namespace="payments",
                      service_account="payments", on_rotate=tokens.append)
    stop = threading.Event()

    def rotate_every_second() -> None:
        while True:  # each token expires 8-9 s after it is written: a kept one would be refused
            kubelet.rotate(now=time.time() - AGE, expiration_seconds=LIFETIME)
            if stop.wait(1.0):
                return

    rotator = threading.Thread(target=rotate_every_second)
    rotator.start()
    assert wait_for(volume.token_path.exists)
    try:
        env = _vault_env(openbao, tmp_path)
        env["TOKEN_PATH"] = str(volume.token_path)
        res = subprocess.run([sys.executable, str(EXAMPLES / "vault_kv.py"), "--count", "8", "--interval", "0.5"],
                             capture_output=True, text=True, env=env, timeout=60, check=False)
    finally:
        stop.set()
        rotator.join()
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 8
    assert all(re.fullmatch(r"read \d: db keys=password,username accessor=\w+", ln) for ln in lines), lines
    assert len({ln.split("accessor=")[1] for ln in lines}) >= 2  # logged in again on the way
    reviews = openbao.apiserver.reviews
    assert all(r.authenticated for r in reviews)  # never an expired projected token
    assert len({r.token_jti for r in reviews}) >= 2, "the example never sent a rotated token"
    assert "s3cret" not in res.stdout + res.stderr
    assert_no_token(res.stdout + res.stderr, tokens)


def test_vault_kv_example_fails_clearly(openbao: OpenBaoServer, api_env: Env, tmp_path: Path) -> None:
    pytest.importorskip("hvac")
    env = _vault_env(openbao, tmp_path)
    env["TOKEN_PATH"] = str(api_env.volume.token_path)  # a token for the API server, not Vault
    res = subprocess.run([sys.executable, str(EXAMPLES / "vault_kv.py"), "--count", "1"],
                         capture_output=True, text=True, env=env, timeout=30, check=False)
    assert res.returncode == 2
    assert "not 'vault'" in res.stderr and "Traceback" not in res.stderr
    api_env.kubelet.rotate(audiences=["vault"])
    res = subprocess.run([sys.executable, str(EXAMPLES / "vault_kv.py"), "--count", "1", "--role", "nope"],
                         capture_output=True, text=True, env=env, timeout=30, check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert 'invalid role name "nope"' in res.stderr and "check that the role exists" in res.stderr
    assert_no_token(res.stdout + res.stderr, api_env.tokens)


# ----------------------------------------------------------------------- kubernetes -------
def test_list_pods_example_with_the_kubernetes_client(api_env: Env) -> None:
    pytest.importorskip("kubernetes")
    api_env.kubelet.start(every=0.4)
    try:
        res = run_example(
            "list_pods.py",
            "--count",
            "4",
            "--interval",
            "0.5",
            env={
                "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": str(api_env.server.port),
                "TOKEN_PATH": str(api_env.volume.token_path),
                "CA_PATH": api_env.ca_file,
            },
        )
    finally:
        api_env.kubelet.stop()
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines() == [f"list {n}: 2 pods in payments: app-0, app-1" for n in range(1, 5)]
    pods = [r for r in api_env.server.requests if r.path == "/api/v1/namespaces/payments/pods"]
    assert len(pods) == 4 and all(r.authorized and r.scheme == "Bearer" for r in pods)
    assert len({r.token_jti for r in pods}) >= 2, "the kubernetes client never sent a rotated token"
    assert_no_token(res.stdout + res.stderr, api_env.tokens)


def test_list_pods_example_outside_a_cluster(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE_")}
    res = subprocess.run(
        [sys.executable, str(EXAMPLES / "list_pods.py"), "--token-path", str(tmp_path / "token")],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert res.returncode == 2
    assert "KUBERNETES_SERVICE_HOST" in res.stderr and "Traceback" not in res.stderr


def _list_pods_manifest() -> dict[str, dict[str, Any]]:
    yaml = pytest.importorskip("yaml")  # PyYAML comes with mkdocs and the kubernetes package
    docs = list(yaml.safe_load_all((EXAMPLES / "list-pods.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert len(kinds) == len(docs) == 4, "one ServiceAccount, Role, RoleBinding and Deployment"
    return kinds


def test_list_pods_manifest_grants_and_mounts_what_the_example_needs() -> None:
    m = _list_pods_manifest()
    sa, role, binding, deploy = m["ServiceAccount"], m["Role"], m["RoleBinding"], m["Deployment"]
    namespace = sa["metadata"]["namespace"]
    assert {d["metadata"]["namespace"] for d in m.values()} == {namespace}
    # RBAC: list pods (core group) in its own namespace, bound to this ServiceAccount
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": namespace}
    ]
    pod = deploy["spec"]["template"]["spec"]
    assert (
        deploy["spec"]["selector"]["matchLabels"].items()
        <= deploy["spec"]["template"]["metadata"]["labels"].items()
    )
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is False  # the projected token is the only one
    # the projected volume: a rotating token for the API server, the CA, the namespace
    (volume,) = pod["volumes"]
    sources = {next(iter(src)): src[next(iter(src))] for src in volume["projected"]["sources"]}
    sat = sources["serviceAccountToken"]
    assert "audience" not in sat  # defaults to the API server's audience, which list_pods.py calls
    assert 600 <= sat["expirationSeconds"] <= 86400  # what the API accepts without extending it
    assert sources["configMap"]["name"] == "kube-root-ca.crt"
    assert sources["configMap"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    assert sources["downwardAPI"]["items"] == [
        {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}
    ]
    (container,) = pod["containers"]
    (mount,) = container["volumeMounts"]
    assert mount["name"] == volume["name"] and "subPath" not in mount  # a subPath never rotates
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TOKEN_PATH"] == f"{mount['mountPath']}/{sat['path']}"
    assert env["CA_PATH"] == f"{mount['mountPath']}/ca.crt"
    # the token is readable by the container's user: the kubelet makes it 0640 with fsGroup
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]


def test_dockerfile_builds_the_image_the_deployment_runs() -> None:
    pod = _list_pods_manifest()["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    lines = [
        ln.strip()
        for ln in (EXAMPLES / "Dockerfile").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    instr = {ln.split(None, 1)[0]: ln.split(None, 1)[1] for ln in lines}
    assert re.fullmatch(r"python:3\.(9|1[0-3])(-slim)?", instr["FROM"]), instr["FROM"]
    install = re.search(r"'sa-token\[([^\]]+)\]'", instr["RUN"])
    assert install and "kubernetes" in install.group(1).split(","), instr["RUN"]
    assert instr["COPY"] == "examples/*.py ./"
    assert instr["USER"] == str(pod["securityContext"]["runAsUser"])
    script = container["command"][1]
    assert container["command"][0] == "python" and (EXAMPLES / script).is_file()
    assert json.loads(instr["CMD"])[:2] == ["python", script]


def test_list_pods_runs_as_the_deployment_runs_it(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    """The Deployment's command and environment, with its projected volume written by the test
    kit's kubelet, against a local API server."""
    pytest.importorskip("kubernetes")
    m = _list_pods_manifest()
    namespace = m["Deployment"]["metadata"]["namespace"]
    pod = m["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mount_path = container["volumeMounts"][0]["mountPath"]
    with FakeAPIServer(token_issuer, audiences=[API_AUDIENCE]) as server:
        volume = ProjectedVolume(tmp_path / "volume")  # token, ca.crt and namespace, as projected
        kubelet = Kubelet(
            volume, token_issuer, audiences=[API_AUDIENCE], ca_pem=server.ca_pem, namespace=namespace
        )
        kubelet.rotate()
        env = {e["name"]: e["value"].replace(mount_path, str(volume.directory)) for e in container["env"]}
        env |= {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(server.port)}
        _python, script, *args = container["command"]
        res = run_example(script, *args, "--count", "2", "--interval", "0.1", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines() == [f"list {n}: 2 pods in {namespace}: app-0, app-1" for n in (1, 2)]
    assert all(r.authorized for r in server.requests)


# ----------------------------------------------------------------------- httpx ------------
def test_httpx_async_example(api_env: Env) -> None:
    pytest.importorskip("httpx")
    api_env.kubelet.start(every=0.4)
    try:
        res = run_example(
            "httpx_async.py",
            "--url",
            f"{api_env.server.url}/echo",
            "--token-path",
            str(api_env.volume.token_path),
            "--audience",
            API_AUDIENCE,
            "--ca",
            api_env.ca_file,
            "--count",
            "4",
            "--concurrency",
            "5",
            "--interval",
            "0.5",
            env={},
        )
    finally:
        api_env.kubelet.stop()
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 4
    assert all(ln.split(" jti=")[0].endswith("200 200 200 200 200") for ln in lines)
    jtis = {j for ln in lines for j in ln.split("jti=")[1].split(",")}
    assert len(jtis) >= 2
    echo = [r for r in api_env.server.requests if r.path == "/echo"]
    assert len(echo) == 20 and all(r.authorized for r in echo)
    assert_no_token(res.stdout + res.stderr, api_env.tokens)


def test_httpx_async_example_explains_a_tls_failure(api_env: Env) -> None:
    """With the system CAs (what the example used before), the API server's certificate does not
    verify: the example says so and what to check, instead of a bare ``ConnectError``."""
    pytest.importorskip("httpx")
    res = run_example(
        "httpx_async.py",
        *("--url", f"{api_env.server.url}/echo", "--token-path", str(api_env.volume.token_path)),
        *("--ca", "system", "--count", "1", "--concurrency", "3"),
        env={},
    )
    assert res.returncode == 1
    assert res.stdout.strip() == "round 1: ConnectError ConnectError ConnectError"
    (why,) = res.stderr.splitlines()  # explained once, not once per request
    assert why.startswith(
        f"TLS: the certificate of {api_env.server.url}/echo does not verify against the system CAs"
    )
    assert "--ca" in why and "ca.crt" in why and "Traceback" not in res.stderr
    assert_no_token(res.stdout + res.stderr, api_env.tokens)


def test_httpx_async_example_missing_ca_file(api_env: Env, tmp_path: Path) -> None:
    pytest.importorskip("httpx")
    missing = tmp_path / "nowhere" / "ca.crt"
    res = run_example(
        "httpx_async.py",
        *("--url", f"{api_env.server.url}/echo", "--token-path", str(api_env.volume.token_path)),
        *("--ca", str(missing), "--count", "1"),
        env={},
    )
    assert res.returncode == 2
    assert res.stderr.startswith("cannot use the CA bundle: ") and str(missing) in res.stderr
    assert "--ca" in res.stderr and "Traceback" not in res.stderr


# ----------------------------------------------------------------------- gunicorn ---------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        body: dict[str, object] = json.loads(resp.read())
        return body


def _workers_seeing(url: str, want: str, timeout: float = 10.0) -> dict[object, object]:
    """Poll until two distinct worker pids have answered with ``want`` as their jti."""
    deadline = time.monotonic() + timeout
    seen: dict[object, object] = {}
    while time.monotonic() < deadline:
        try:
            body = _get(url)
        except OSError:
            time.sleep(0.05)
            continue
        seen[body["pid"]] = body["jti"]
        if sum(1 for j in seen.values() if j == want) >= 2:
            break
    return seen


def test_gunicorn_preload_workers_follow_rotations(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or shutil.which("gunicorn")
    if gunicorn is None:
        pytest.skip("gunicorn is not installed")
    volume = ProjectedVolume(tmp_path / "volume")
    kubelet = Kubelet(volume, token_issuer, audiences=["app"], expiration_seconds=3600)
    first = jti(kubelet.rotate())
    port = _free_port()
    env = {**os.environ, "TOKEN_PATH": str(volume.token_path), "TOKEN_AUDIENCE": "app"}
    proc = subprocess.Popen(
        [
            gunicorn,
            "--preload",
            "-w",
            "2",
            "-b",
            f"127.0.0.1:{port}",
            "--chdir",
            str(EXAMPLES),
            "--graceful-timeout",
            "2",
            "gunicorn_app:app",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        before = _workers_seeing(url, first)
        assert sum(1 for j in before.values() if j == first) >= 2, f"workers before rotation: {before}"
        assert os.getpid() not in before
        second = jti(kubelet.rotate())  # after the fork: each worker must pick it up on its own
        after = _workers_seeing(url, second)
        assert sum(1 for j in after.values() if j == second) >= 2, f"workers after rotation: {after}"
        third = jti(kubelet.rotate())
        again = _workers_seeing(url, third)
        assert sum(1 for j in again.values() if j == third) >= 2, f"workers after 2nd rotation: {again}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert "Traceback" not in out, out
    assert_no_token(out, [kubelet.current or ""])


def test_httpx_async_example_at_an_url_that_reports_no_jti(api_env: Env) -> None:
    """The default URL, /version, says nothing of the token: no "jti=None" line."""
    pytest.importorskip("httpx")
    res = run_example(
        "httpx_async.py",
        "--url", f"{api_env.server.url}/version",
        "--token-path", str(api_env.volume.token_path),
        "--audience", API_AUDIENCE,
        "--ca", api_env.ca_file,
        "--count", "1", "--concurrency", "2", "--interval", "0",
        env={},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines() == ["round 1: 200 200"]


# ----------------------------------------------------------------------- the verify pair -
def test_verify_pair_manifest_wires_audience_rbac_and_image() -> None:
    yaml = pytest.importorskip("yaml")
    docs = list(yaml.safe_load_all((EXAMPLES / "verify-pair.yaml").read_text()))
    deployments = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"}
    server, client = deployments["payments"], deployments["payments-client"]
    command = server["containers"][0]["command"]
    audience = command[command.index("--audience") + 1]
    (source,) = client["volumes"][0]["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == audience
    bound = {d["roleRef"]["name"]: d["subjects"][0]["name"] for d in docs if d["kind"] == "ClusterRoleBinding"}
    assert bound == {"system:service-account-issuer-discovery": "payments", "system:auth-delegator": "payments"}
    assert server["serviceAccountName"] == "payments" and "automountServiceAccountToken" not in server
    for spec in (server, client):
        assert (EXAMPLES / spec["containers"][0]["command"][1]).is_file()
    assert "verify" in re.search(r"'sa-token\[([^\]]+)\]'", (EXAMPLES / "Dockerfile").read_text()).group(1)


def test_verify_pair_examples_talk_as_the_deployments_do(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    with FakeAPIServer(token_issuer) as server:
        ca = server.write_ca(tmp_path / "ca.crt")
        own = ProjectedVolume(tmp_path / "b")
        Kubelet(own, token_issuer, service_account="payments").rotate()
        caller = ProjectedVolume(tmp_path / "a")
        kubelet = Kubelet(caller, token_issuer, audiences=["payments"], service_account="payments-client")
        kubelet.rotate()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        b = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "payments_server.py"), "--port", str(port), "--api-server", server.url,
             "--ca", ca, "--bearer-file", str(own.token_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert b.stdout is not None and b.stdout.readline().startswith("listening")
            url = f"http://127.0.0.1:{port}/pay"
            a = run_example("payments_client.py", "--url", url, "--token-path", str(caller.token_path),
                            "--count", "2", "--interval", "0.1", env={})
            assert a.returncode == 0, a.stderr
            lines = a.stdout.splitlines()
            assert len(lines) == 2 and all(ln.startswith("200 ") for ln in lines)
            said = json.loads(lines[0][4:])
            assert said == {"caller": "system:serviceaccount:default:payments-client", "pod": "app-0", "method": "jwks"}
            # a token for another audience is refused by B
            other = ProjectedVolume(tmp_path / "c")
            Kubelet(other, token_issuer, audiences=["other"]).rotate()
            a = run_example("payments_client.py", "--url", url, "--token-path", str(other.token_path),
                            "--audience", "other", env={})
            assert a.returncode == 1 and a.stdout.startswith("401 ")
            assert_no_token(a.stdout + a.stderr, [kubelet.current], what="the client's output")
        finally:
            b.terminate()
            b.wait(10)

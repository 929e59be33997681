"""``FakeSTS``: loopback fakes of the cloud token services that take a projected token.

```python
with FakeSTS(issuer, platform="azure") as sts:
    sts.write_ca(tmp_path / "ca.pem")             # HTTPS with a test CA (trustme)
    credential = WorkloadIdentityCredential(...)  # pointed at sts.url
    sts.calls[-1].jti                             # which token was presented: never the token itself
```

One server per platform, each speaking that service's wire format (any path):

* ``aws``: ``AssumeRoleWithWebIdentity`` (``WebIdentityToken``), STS's XML answers and errors.
* ``alibabacloud``: ``AssumeRoleWithOIDC`` by GET or POST (``OIDCToken``), JSON ``Credentials``
  or ``Code``/``Message``.
* ``azure``: ``POST /{tenant}/oauth2/v2.0/token`` (``client_assertion``), OAuth JSON; errors
  carry ``AADSTS...`` codes.
* ``google``: ``POST /v1/token``, RFC 8693 token exchange (``subject_token``), OAuth JSON.

The token is verified as the real service does: RS256 signature against the
[`TokenIssuer`][sa_token.testing.TokenIssuer]'s key, ``iss``, ``exp`` and ``nbf``, and ``aud``
(the platform's audience unless ``audience=`` says otherwise). A refusal uses the platform's
own error code (``ExpiredTokenException``, ``AuthenticationFail.OIDCToken.Expired``,
``AADSTS700024``, ``invalid_grant``...).
[`FakeSTS.reject()`][sa_token.testing.sts.FakeSTS.reject] makes it refuse every token.
Each call is recorded as an [`ExchangeCall`][sa_token.testing.sts.ExchangeCall] (with the
``jti``, never the token) and whether the token travelled in the URL.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Optional, Union
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

import jwt

if TYPE_CHECKING:
    from ._issuer import TokenIssuer

__all__ = ["AUDIENCES", "ExchangeCall", "FakeSTS"]

# The audience each platform requires of the projected token (what the pod spec must request).
AUDIENCES = {
    "aws": "sts.amazonaws.com",
    "alibabacloud": "sts.aliyuncs.com",
    "azure": "api://AzureADTokenExchange",
    "google": "https://iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/pool/providers/k8s",
}
_TOKEN_PARAM = {
    "aws": "WebIdentityToken",
    "alibabacloud": "OIDCToken",
    "azure": "client_assertion",
    "google": "subject_token",
}
# Credentials' lifetime when the request does not ask for one (STS and RAM default to an hour;
# Entra and Google issue access tokens for about an hour).
DEFAULT_LIFETIME = 3600
# (platform, failure) -> (HTTP status, error code, message): the services' own codes and texts.
_ERRORS: dict[tuple[str, str], tuple[int, str, str]] = {
    ("aws", "expired"): (
        400,
        "ExpiredTokenException",
        "Token expired: current date/time {now} must be before the expiration date/time {exp}",
    ),
    ("aws", "audience"): (400, "InvalidIdentityToken", "Incorrect token audience"),
    ("aws", "invalid"): (
        400,
        "InvalidIdentityToken",
        "The web identity token that was passed could not be validated by AWS",
    ),
    ("alibabacloud", "expired"): (
        400,
        "AuthenticationFail.OIDCToken.Expired",
        "This JsonWebToken is expired.",
    ),
    ("alibabacloud", "audience"): (400, "AuthenticationFail.OIDCToken.AudienceNotMatch", "Invalid audience."),
    ("alibabacloud", "invalid"): (400, "AuthenticationFail.OIDCToken.Invalid", "The OIDC token is invalid."),
    ("azure", "expired"): (
        400,
        "AADSTS700024",
        "Client assertion is not within its valid time range. "
        "Current time: {now}, expiry time of assertion {exp}.",
    ),
    ("azure", "audience"): (
        400,
        "AADSTS700212",
        "No matching federated identity record found for presented assertion audience.",
    ),
    ("azure", "invalid"): (401, "AADSTS700027", "Client assertion failed signature validation."),
    ("google", "expired"): (400, "invalid_grant", "The ID Token is expired: exp {exp} is before {now}."),
    ("google", "audience"): (
        400,
        "invalid_grant",
        "The audience in ID Token does not match the expected audience.",
    ),
    ("google", "invalid"): (400, "invalid_grant", "Invalid ID Token: the signature could not be verified."),
}


@dataclass(frozen=True)
class ExchangeCall:
    """One request to a [`FakeSTS`][sa_token.testing.sts.FakeSTS]. Never the token itself."""

    method: str
    path: str
    status: int
    jti: Optional[str]  # the presented token's jti (verified or not); None if absent or undecodable
    code: Optional[str]  # the error code answered; None on success
    token_in_url: bool  # the token was in the query string (where proxies and logs see URLs)
    params: Mapping[str, str] = field(default_factory=dict)  # the other request parameters
    expires_at: Optional[float] = None  # the issued credentials' expiry (POSIX seconds)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet (and a GET would carry the token in its request line)

    def do_GET(self) -> None:
        self.server.owner._serve(self)

    do_POST = do_GET

    def reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: FakeSTS

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        ctx = self.owner._ssl_context
        if ctx is not None:
            sock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            sock.settimeout(10)  # a client that never finishes its handshake frees the thread
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up or fail the handshake: no tracebacks on stderr


class FakeSTS:
    """A token service for one ``platform`` (``"aws"``, ``"alibabacloud"``, ``"azure"``,
    ``"google"``) on 127.0.0.1, verifying tokens from ``issuer``.

    Options (keyword-only): ``audience`` (default the platform's, see `AUDIENCES`), ``tls``
    (HTTPS with a ``trustme`` CA, default; ``False`` for plain HTTP), ``lifetime`` (seconds the
    issued credentials last; default what the request asks, else an hour), ``leeway`` (clock skew
    allowed on ``exp``/``nbf``, default 0 so that an expired token is refused at once).
    """

    def __init__(
        self,
        issuer: TokenIssuer,
        *,
        platform: str,
        audience: Optional[str] = None,
        tls: bool = True,
        lifetime: Optional[int] = None,
        leeway: float = 0.0,
    ) -> None:
        if platform not in _TOKEN_PARAM:
            raise ValueError(f"platform must be one of {sorted(_TOKEN_PARAM)}, not {platform!r}")
        self.issuer, self.platform, self.lifetime, self.leeway = issuer, platform, lifetime, leeway
        self.audience = audience or AUDIENCES[platform]
        self._lock = threading.Lock()
        self._calls: list[ExchangeCall] = []
        self._reject: Optional[tuple[str, str, int]] = None
        self._ssl_context: Optional[ssl.SSLContext] = None
        self._ca_pem: Optional[bytes] = None
        if tls:
            import trustme

            ca = trustme.CA()
            self._ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ca.issue_cert("127.0.0.1", "localhost").configure_cert(self._ssl_context)
            self._ca_pem = ca.cert_pem.bytes()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.port: int = self._httpd.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="sa-token-fake-sts",
            daemon=True,
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"FakeSTS({self.platform!r}, {self.url!r}, calls={len(self._calls)})"

    def __enter__(self) -> FakeSTS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def ca_pem(self) -> bytes:
        if self._ca_pem is None:
            raise RuntimeError("this FakeSTS serves plain HTTP (tls=False): it has no CA")
        return self._ca_pem

    def write_ca(self, path: Union[str, os.PathLike[str]]) -> str:
        """Write the CA certificate (PEM) to ``path``; returns the path as a string."""
        with open(path, "wb") as f:
            f.write(self.ca_pem)
        return os.fspath(path)

    @property
    def calls(self) -> list[ExchangeCall]:
        """A snapshot of the calls so far, oldest first."""
        with self._lock:
            return list(self._calls)

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()

    def reject(self, code: str, message: str = "Rejected by the test.", *, status: int = 400) -> None:
        """Refuse every exchange with this error (the platform's code, e.g. ``"AccessDenied"``)
        until [`accept()`][sa_token.testing.sts.FakeSTS.accept]."""
        with self._lock:
            self._reject = (code, message, status)

    def accept(self) -> None:
        """Verify tokens again (undo [`reject()`][sa_token.testing.sts.FakeSTS.reject])."""
        with self._lock:
            self._reject = None

    # ------------------------------------------------------------------ one request -------
    def _serve(self, h: _Handler) -> None:
        url = urlsplit(h.path)
        query = dict(parse_qsl(url.query))
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0)).decode("utf-8", "replace")
        params = {**query, **dict(parse_qsl(body))}
        name = _TOKEN_PARAM[self.platform]
        token = params.pop(name, None)
        jti = None
        if token:
            try:
                jti = jwt.decode(token, options={"verify_signature": False}).get("jti")
            except jwt.InvalidTokenError:
                pass
        with self._lock:
            forced = self._reject
        now = time.time()
        status, code, message, exp = 200, None, "", None
        if forced is not None:
            code, message, status = forced
        else:
            failure, exp = self._verify(token)
            if failure is not None:
                status, code, message = _ERRORS[(self.platform, failure)]
                message = message.format(now=_iso(now), exp=_iso(exp or now))
        expires_at = None
        if code is None:
            lifetime = self.lifetime or int(params.get("DurationSeconds") or DEFAULT_LIFETIME)
            expires_at = float(int(now) + lifetime)
            answer = self._success(expires_at, lifetime, params)
        else:
            answer = self._error(code, message)
        call = ExchangeCall(h.command, url.path, status, jti, code, name in query, params, expires_at)
        with self._lock:  # recorded before the answer goes out: a client that has it sees the call
            self._calls.append(call)
        h.reply(status, *answer)

    def _verify(self, token: Optional[str]) -> tuple[Optional[str], Optional[float]]:
        if not token:
            return "invalid", None
        try:
            self.issuer.verify(token, audience=self.audience, leeway=self.leeway)
        except jwt.ExpiredSignatureError:
            exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
            return "expired", exp
        except jwt.InvalidAudienceError:
            return "audience", None
        except jwt.InvalidTokenError:
            return "invalid", None
        return None, None

    def _success(self, expires_at: float, lifetime: int, params: Mapping[str, str]) -> tuple[bytes, str]:
        key, secret, session = (
            "ASIA" + secrets.token_hex(8).upper(),
            secrets.token_urlsafe(30),
            secrets.token_urlsafe(60),
        )
        if self.platform == "aws":
            role = params.get("RoleArn", "")
            xml = (
                '<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
                "<AssumeRoleWithWebIdentityResult><Credentials>"
                f"<AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>"
                f"<SessionToken>{session}</SessionToken><Expiration>{_iso(expires_at)}</Expiration>"
                f"</Credentials><AssumedRoleUser><Arn>{escape(role)}</Arn><AssumedRoleId>AROA:x</AssumedRoleId>"
                f"</AssumedRoleUser><Audience>{escape(self.audience)}</Audience></AssumeRoleWithWebIdentityResult>"
                f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
                "</AssumeRoleWithWebIdentityResponse>"
            )
            return xml.encode(), "text/xml"
        body: dict[str, Any]
        if self.platform == "alibabacloud":
            body = {
                "RequestId": str(uuid.uuid4()),
                "AssumedRoleUser": {"Arn": params.get("RoleArn", ""), "AssumedRoleId": "3000:x"},
                "Credentials": {
                    "AccessKeyId": "STS." + key,
                    "AccessKeySecret": secret,
                    "SecurityToken": session,
                    "Expiration": _iso(expires_at),
                },
            }
        else:  # azure and google: OAuth 2.0 token responses
            body = {"access_token": session, "token_type": "Bearer", "expires_in": lifetime}
            if self.platform == "google":
                body["issued_token_type"] = "urn:ietf:params:oauth:token-type:access_token"
        return json.dumps(body).encode(), "application/json"

    def _error(self, code: str, message: str) -> tuple[bytes, str]:
        request_id = str(uuid.uuid4())
        if self.platform == "aws":
            xml = (
                '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
                f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
                f"<RequestId>{request_id}</RequestId></ErrorResponse>"
            )
            return xml.encode(), "text/xml"
        body: dict[str, Any]
        if self.platform == "alibabacloud":
            body = {"RequestId": request_id, "HostId": "sts.aliyuncs.com", "Code": code, "Message": message}
        elif self.platform == "azure" and code.startswith("AADSTS"):
            body = {
                "error": "invalid_client",
                "error_description": f"{code}: {message} Trace ID: {request_id}",
                "error_codes": [int(code[6:])],
                "trace_id": request_id,
            }
        else:
            body = {"error": code, "error_description": message}
        return json.dumps(body).encode(), "application/json"

"""Vault's side of the login: its auth method's calls (login, renew, look up, revoke) through
hvac's adapter, and its answers turned into `VaultLoginError`s that say what to check. The
schedule of the calls is `sa_token._lease`'s; `VaultAuth` is `sa_token.vault`'s, and the hvac
client's adapter `sa_token._vault_adapter`'s."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import requests
from hvac.adapters import RawAdapter  # (sa_token.vault imports this after its install hint)

from . import _fmt
from ._lease import Grant
from ._token import Token
from .errors import ExchangeError

__all__ = ["FORBIDDEN", "VaultLoginError"]

FORBIDDEN = 403

# Answers after which the same call may succeed later: too many requests, a proxy without a
# backend, sealed or standby. (OpenBao answers 500 "past the max TTL" to a renewal it refuses.)
RETRY_LATER = frozenset({429, 502, 503, 504})
# Vault's error text is shown up to this length (with its JWT-shaped runs replaced): enough for
# any of Vault's messages, short of flooding a log line with a proxy's HTML page.
MAX_SHOWN_ERROR = 600
# What to check after a refused login, by a fragment of Vault's error text (the first match).
HINTS = (
    ("sealed", "Vault is sealed: unseal it"),
    ("role", "check that the role exists: `vault read auth/{mount}/role/{role}` (role=)"),
    ("audience", "the token is for audience {aud}: check the role's audience (jwt: bound_audiences) "
                 "and serviceAccountToken.audience in the pod's projected volume"),
    ("not authorized|subject|claim", "the token is for {sub}: check the role's "
                                     "bound_service_account_names and bound_service_account_namespaces "
                                     "(jwt: bound_subject, bound_claims)"),
    ("no handler|unsupported path", "no auth method is mounted at auth/{mount}: check mount_point="),
    ("permission denied", "Vault's TokenReview of the token failed: check auth/{mount}/config "
                          "(kubernetes_host, kubernetes_ca_cert, a token_reviewer_jwt allowed to create "
                          "TokenReviews) and that the pod still exists; Vault's log says more"),
    ("", "check the role {role!r} and auth/{mount}/config"),
)



class VaultLoginError(ExchangeError):
    """No valid Vault token: the login failed, or none could be attempted.

    The message quotes Vault's own error text (also in `server_message`, with the HTTP
    `status`) and says what to check; it never contains a token. `reason` is `"rejected"`
    (wrong role, audience not allowed, service account not bound...), `"unreachable"`,
    `"unavailable"` (sealed, 5xx: `transient` is true for these two) or
    `"projected-token-expired"` (the kubelet has not rotated an expired projected token).
    """

    reason = "rejected"
    platform = "vault"


@dataclass(frozen=True)
class _Issued:
    token: str = field(repr=False)
    accessor: str
    policies: tuple[str, ...]
    token_type: str

    def __str__(self) -> str:  # for log lines: in words, never the token
        policies = ", ".join(_fmt.text(p) for p in self.policies) or "none"
        return f"a Vault {self.token_type} token, accessor {_fmt.text(self.accessor)}, policies {policies}"


class _Vault:
    """The authenticator (`sa_token._lease.Authenticator`): Vault's calls through hvac's adapter."""

    def __init__(self, url: str, role: str, mount: str, path: str, **adapter: Any) -> None:
        self.url, self.role, self.mount, self.path = url, role, mount, path
        self.adapter = RawAdapter(base_uri=url, token=None, **adapter)
        self.sessions = [self.adapter.session]

    def login(self, tok: Token) -> Grant[_Issued]:
        return self._grant(self._call("log in", f"/v1/auth/{self.mount}/login", None, tok))

    def renew(self, cred: _Issued) -> Grant[_Issued]:
        return self._grant(self._call("renew", "/v1/auth/token/renew-self", cred))

    def valid(self, cred: _Issued) -> bool:
        """False only if Vault says the token itself is invalid: lookup-self answers 403 (its
        text does not tell a policy denial from an invalid token)."""
        try:
            self._call("check", "/v1/auth/token/lookup-self", cred, method="get")
        except VaultLoginError as exc:
            return exc.status != FORBIDDEN
        return True

    def revoke(self, cred: _Issued) -> None:
        self._call("revoke", "/v1/auth/token/revoke-self", cred)

    def error(self, message: str, *, reason: str, transient: bool = False) -> VaultLoginError:
        return VaultLoginError(message, path=self.path, reason=reason, transient=transient)

    def after_fork(self) -> None:  # pooled connections in a forked child are the parent's
        for session in self.sessions:
            session.close()

    def _call(self, what: str, url: str, cred: Optional[_Issued], tok: Optional[Token] = None,
              method: str = "post") -> Any:
        # The token goes straight into the request: no local of this frame holds it.
        failure = None
        try:
            resp = self.adapter.request(method, url, raise_exception=False,
                                        headers={"X-Vault-Token": cred.token} if cred else None,
                                        json={"role": self.role, "jwt": tok.value} if tok else None)
        except requests.RequestException as exc:  # raised below, outside: no chained frames
            failure = f"{type(exc).__name__}: {_fmt.text(exc)}"[:300]
        if failure is not None:
            raise self.error(f"cannot {what} at Vault {self.url}: {failure}; check url= and the network",
                             reason="unreachable", transient=True)
        if resp.ok:
            return resp.json() if resp.content else None
        said = _said(resp)
        busy = resp.status_code in RETRY_LATER or (tok is not None and resp.status_code >= 500)
        hint = "; " + self._hint(said, tok) if tok else ""
        raise VaultLoginError(f"Vault {self.url} refused to {what} (HTTP {resp.status_code}): {said}{hint}",
                              path=self.path, reason="unavailable" if busy else "rejected", transient=busy,
                              status=resp.status_code, server_message=said)

    def _hint(self, said: str, tok: Token) -> str:
        text = said.lower()
        hint = next(h for keys, h in HINTS if any(k in text for k in keys.split("|")))
        return hint.format(mount=self.mount, role=self.role, aud=_fmt.text(list(tok.audiences)),
                           sub=_fmt.text(tok.subject))

    @staticmethod
    def _grant(body: Any) -> Grant[_Issued]:
        auth = body["auth"]
        cred = _Issued(auth["client_token"], auth.get("accessor") or "", tuple(auth.get("policies") or ()),
                       auth.get("token_type") or "service")
        return Grant(cred, float(auth.get("lease_duration") or 0), bool(auth.get("renewable")))


def _said(resp: Any) -> str:
    """What Vault said in a refusal, through the one formatter: a Vault (or a proxy) that
    echoes the login request must not put the projected token into the message, the repr or
    server_message."""
    try:
        errors = resp.json().get("errors") or []
    except ValueError:
        errors = [resp.text]
    said = _fmt.text(" ".join(" ".join(str(e).split()) for e in errors), limit=MAX_SHOWN_ERROR)
    return said or _fmt.text(resp.reason)

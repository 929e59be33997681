"""What the HTTP-client integrations share, free of any HTTP library.

`sa_token.requests` and `sa_token.httpx` are thin adapters over `BearerAuth`
(Authlib keeps its protocol logic in one ``TokenAuth`` the same way). The rules they share:

* **The header.** ``Authorization: Bearer <token>``, unless the request already has an
  ``Authorization`` header: a header the caller set is sent unchanged and never retried with
  our token (client-go's ``tokenSourceTransport``: "to allow --token to override other bearer
  token providers").
* **Hosts.** With ``hosts=``, only requests to those hosts get the token. An entry is a host
  name or IP address, optionally with a port: ``"vault.vault.svc"``, ``"vault.vault.svc:8200"``,
  ``"10.0.0.1:6443"``, ``"[fd00::1]:6443"``. A bare host matches only the scheme's default port
  (443 for ``https``, 80 for ``http``), whether the URL spells the port out or not; with a port
  it matches exactly that port (``"api:443"`` also matches ``https://api/``). Another port on
  the same host can be another service, so it never gets the token by accident. Host names
  compare case-insensitively, in their ASCII (punycode) form, and exactly: no wildcards, no
  subdomains.
* **401.** After a 401 to a request that carried our token, the source is invalidated for
  tokens read before that request started (client-go's ``ResetTokenOlderThan(start)``: a burst
  of 401s causes one re-read), the token is read again, and only if it changed is the request
  sent again, at most `MAX_401_RETRIES` time(s), and only if its body can be replayed.
  Otherwise the 401 is returned to the caller as it came. A 401 to a request that did not
  carry our token (another host, a caller's own header, a redirect that dropped the header)
  changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Optional, Union
from urllib.parse import urlsplit

from .errors import TokenError

if TYPE_CHECKING:
    from ._source import TokenSource

__all__ = ["AUTHORIZATION", "MAX_401_RETRIES", "BearerAuth", "parse_hosts"]

log = logging.getLogger("sa_token")

AUTHORIZATION = "Authorization"
# How many times one request is sent again after a 401, with a token re-read from the file.
# One: the kubelet writes a new token at most every few minutes, so a second fresh token
# within one request's lifetime means the server rejects it for another reason (RBAC, a
# revoked binding, the wrong audience), and retrying again would only hide that. google-auth
# allows two refreshes because its refresh is a network call that can itself fail.
MAX_401_RETRIES = 1
UNAUTHORIZED = 401
# The ports a URL without an explicit port uses (RFC 9110 section 4.2).
DEFAULT_PORTS = {"http": 80, "https": 443}

HostKey = tuple[str, Optional[int]]  # (lower-case host, port or None for "the default port")


def parse_hosts(hosts: Union[str, Iterable[str]]) -> frozenset[HostKey]:
    """Parse ``hosts=`` entries (``host``, ``host:port``, ``[v6]``, ``[v6]:port``, bare ``v6``)."""
    if isinstance(hosts, str):
        hosts = [hosts]
    keys = set()
    for entry in hosts:
        keys.add(_parse_host(entry))
    if not keys:
        raise ValueError("hosts must name at least one host (or be None for every host)")
    return frozenset(keys)


def _parse_host(entry: object) -> HostKey:
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(f"hosts entries must be non-empty strings like 'api.example.com:443', got {entry!r}")
    text = entry.strip().lower()
    if "/" in text or "@" in text:
        raise ValueError(f"hosts entry {entry!r}: give a host or host:port, not a URL")
    if not text.isascii():
        raise ValueError(f"hosts entry {entry!r}: give the host in its ASCII (punycode, 'xn--') form")
    port_text: Optional[str] = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"hosts entry {entry!r}: expected '[ipv6]' or '[ipv6]:port'")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host = text  # a name, an IPv4 address or a bare IPv6 address
    if not host:
        raise ValueError(f"hosts entry {entry!r} has no host")
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"hosts entry {entry!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def host_allowed(url: str, allowed: Optional[frozenset[HostKey]]) -> bool:
    """Whether a request to ``url`` may carry the token (always, when ``allowed`` is None)."""
    if allowed is None:
        return True
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:  # an invalid port: not a host we were told about
        return False
    if not host:
        return False
    default = DEFAULT_PORTS.get(parts.scheme.lower())
    if port is None or port == default:
        # No port, or the scheme's default: a bare entry matches, and so does "host:<default>".
        return (host, None) in allowed or (default is not None and (host, default) in allowed)
    return (host, port) in allowed


def bearer(token: str) -> str:
    return f"Bearer {token}"


class BearerAuth:
    """The library-independent part of ``TokenAuth``: which requests get the token, and what
    to do after a 401. Holds no per-request state, so one instance serves many threads."""

    def __init__(self, source: TokenSource, *, hosts: Union[str, Iterable[str], None] = None) -> None:
        self.source = source
        self.hosts: Optional[frozenset[HostKey]] = None if hosts is None else parse_hosts(hosts)

    def __repr__(self) -> str:
        hosts = None if self.hosts is None else sorted(_show(h) for h in self.hosts)
        return f"{type(self).__module__}.{type(self).__name__}({self.source!r}, hosts={hosts!r})"

    def applies(self, url: str, has_authorization: bool) -> bool:
        """Whether to attach the token: no caller header, and a host we may send it to."""
        return not has_authorization and host_allowed(url, self.hosts)

    def carried_ours(self, url: str, header: Optional[str], sent: str) -> bool:
        """Whether the request that got a 401 really carried the token we attached (a redirect
        to another origin drops it; the hosts rule is checked again for the final URL)."""
        return header == bearer(sent) and host_allowed(url, self.hosts)

    @staticmethod
    def started() -> float:
        """The request's start, for [`TokenSource.invalidate()`][sa_token.TokenSource.invalidate] (a POSIX
        timestamp)."""
        return time.time()

    def fresh_token(self, sent: str, started: float) -> Optional[str]:
        """After a 401 to a request that carried ``sent``: invalidate tokens read before the
        request started, read again, and return the token if it differs from ``sent``.
        ``None`` means "return the 401": nothing newer, or the re-read failed (the error
        is raised again by the next request, when it asks for a token)."""
        self.source.invalidate(older_than=started)
        try:
            token = self.source.token()
        except TokenError as exc:
            log.debug("sa-token: no token to retry a 401 with: %s", exc)
            return None
        return None if token == sent else token


def _show(key: HostKey) -> str:
    host, port = key
    if ":" in host:
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"

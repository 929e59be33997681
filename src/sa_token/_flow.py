"""The bearer-token exchange, written once for every client (httpx's ``auth_flow`` idea).

Every integration is a thin driver of one [`Attempt`][sa_token._flow.Attempt] per request. The
attempt says which token to send; the driver does the sending in its client's own way:

1. **Read the token** (from the [`TokenSource`][sa_token.TokenSource]; a file read, when one
   is due, runs in a worker thread for the async drivers, never on the event loop).
2. **Send with it**: the driver puts ``Authorization: Bearer <token>`` on the request (gRPC: its
   metadata plugin does) and sends. Any answer but a rejection stands: the driver stops there.
3. **On a rejection** (HTTP 401, gRPC ``UNAUTHENTICATED``), which the driver reports as a
   [`Reply`][sa_token._flow.Reply], of a request that carried this token: forget that token if
   it is still the current one (``TokenSource.invalidate_if``, a compare-and-swap: a burst of
   401s causes one re-read, as client-go's ``ResetTokenOlderThan`` does, with no clock
   involved), read again, and only if
   the token changed and the body can be replayed, send once more ([`MAX_401_RETRIES`]
   [sa_token._flow.MAX_401_RETRIES]). Otherwise the rejection is the caller's answer (after a
   body that cannot be replayed, the next request reads the file again).

The rules the drivers share:

* **The caller's own header.** A request that already has an ``Authorization`` header is sent
  unchanged and never retried with our token (client-go's ``tokenSourceTransport``: "to allow
  --token to override other bearer token providers").
* **Hosts.** With ``hosts=``, only requests to those hosts get the token. An entry is a host name
  or IP address, optionally with a port: ``"vault.vault.svc"``, ``"vault.vault.svc:8200"``,
  ``"10.0.0.1:6443"``, ``"[fd00::1]:6443"``. A bare host matches only the scheme's default port
  (443 for ``https``, 80 for ``http``), spelled out or not; with a port it matches exactly that
  port. Another port on the same host can be another service, so it never gets the token by
  accident. Host names compare case-insensitively, in their ASCII (punycode) form, and
  exactly: no wildcards, no subdomains.
* **No token in a frame.** Nothing here binds the raw token string to a local variable: the
  attempt holds [`Token`][sa_token.Token] objects (whose ``repr`` hides the value) and the
  drivers put ``bearer(held)`` straight into the header they send, so error reporters that print
  the locals of a traceback (Sentry, loguru, rich, ``pytest -l``) never show it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Optional, Protocol, TypeVar, Union
from urllib.parse import urlsplit

from ._observe import count_auth_retry
from .errors import TokenError

if TYPE_CHECKING:
    from ._source import TokenSource
    from ._token import Token

__all__ = [
    "AUTHORIZATION",
    "MAX_401_RETRIES",
    "Attempt",
    "BearerFlow",
    "Reply",
    "bearer",
    "host_allowed",
    "parse_hosts",
    "read_nowait",
    "scrubbed",
]

log = logging.getLogger("sa_token")

AUTHORIZATION = "Authorization"
# How many times one request is sent again after a rejection, with a token re-read from the
# file. One: the kubelet writes a new token at most every few minutes, so a second fresh token
# within one request's lifetime means the server rejects it for another reason (a revoked
# binding, the wrong audience), and retrying again would only hide that. google-auth allows
# two refreshes because its refresh is a network call that can itself fail.
MAX_401_RETRIES = 1
UNAUTHORIZED = 401
# The ports a URL without an explicit port uses (RFC 9110 section 4.2).
DEFAULT_PORTS = {"http": 80, "https": 443}

HostKey = tuple[str, Optional[int]]  # (lower-case host, port or None for "the default port")
T = TypeVar("T")


class ToThread(Protocol):
    """Runs a function in a worker thread: ``asyncio.to_thread``, ``anyio.to_thread.run_sync``."""

    def __call__(self, func: Callable[[], T], /) -> Awaitable[T]: ...


def bearer(held: Token) -> str:
    """The ``Authorization`` value for ``held``; put it straight into the header."""
    return "Bearer " + held.value


class Reply:
    """A rejection (HTTP 401, gRPC ``UNAUTHENTICATED``) of a request the driver sent with the
    attempt's token: the only answer a driver reports.

    Args:
        url: where the rejected request went (after redirects); ``None``: where it was sent.
        authorization: the ``Authorization`` header the answered request carried, for clients
            whose redirects may have dropped or replaced it; leave it out when the request
            surely carried the attempt's token.
    """

    __slots__ = ("authorization", "url")
    _SENT = object()

    def __init__(self, url: Optional[str] = None, authorization: object = _SENT) -> None:
        self.url = url
        self.authorization = authorization

    def __repr__(self) -> str:
        return f"Reply(url={self.url!r})"


class BearerFlow:
    """The library-independent part of every integration: which requests get the token, and
    what to do after a rejection. Holds no per-request state, so one instance serves any number
    of threads, tasks and clients.

    Args:
        source: where the token comes from.
        hosts: the hosts that may get the token (see the module documentation); ``None``: all.
        client: the integration's name, for [`count_auth_retry`][sa_token._observe.count_auth_retry].
        what: the public call, for the `TypeError` that refuses a path where a source belongs.
    """

    def __init__(
        self,
        source: TokenSource,
        *,
        hosts: Union[str, Iterable[str], None] = None,
        client: str,
        what: Optional[str] = None,
    ) -> None:
        from ._source import require_source  # here: _source imports this module's users

        self.source = require_source(source, what or f"the {client} integration")
        self.hosts: Optional[frozenset[HostKey]] = None if hosts is None else parse_hosts(hosts)
        self.client = client

    def __repr__(self) -> str:
        hosts = None if self.hosts is None else sorted(_show(h) for h in self.hosts)
        return f"{type(self).__name__}({self.source!r}, hosts={hosts!r})"

    def attempt(
        self,
        url: Optional[str],
        *,
        has_authorization: bool = False,
        replayable: Callable[[], bool] = lambda: True,
    ) -> Optional[Attempt]:
        """Start the attempt of one request, or return ``None`` when the request is not ours
        (it has its own ``Authorization`` header, or goes to a host not in ``hosts``). A ``url``
        of ``None`` says the driver applied the hosts rule itself
        ([`allows`][sa_token._flow.BearerFlow.allows]).

        ``replayable`` is asked only after a rejection: whether the body can be sent again
        (it may rewind the body, as requests' driver does).
        """
        if has_authorization or (url is not None and not host_allowed(url, self.hosts)):
            return None
        return Attempt(self, replayable)

    def allows(self, scheme: str, host: Optional[str], port: Optional[int]) -> bool:
        """The hosts rule for a URL already split into its parts (``port`` None: the default)."""
        return self.hosts is None or _allowed(scheme, host, port, self.hosts)

    def _carried(self, reply: Reply, sent: Token) -> bool:
        """Whether the rejected request really carried ``sent`` (a redirect to another origin
        drops it; the hosts rule is checked again for the final URL)."""
        if reply.url is not None and not host_allowed(reply.url, self.hosts):
            return False
        return reply.authorization is Reply._SENT or reply.authorization == bearer(sent)


class Attempt:
    """One request's way through the flow, driven by [`step`][sa_token._flow.Attempt.step]
    (synchronous clients) or [`astep`][sa_token._flow.Attempt.astep] (async clients): the first
    call returns the token to send with; each rejection the driver reports returns the token to
    send again with, or ``None``: the rejection stands. An answer that is not a rejection ends
    the attempt (the driver stops without reporting it).

    After a rejection the attempt asks the source to forget the token *it sent*
    ([`invalidate_if`][sa_token.TokenSource.invalidate_if], a compare-and-swap: a burst of 401s
    causes one re-read, and no clock is involved), then reads again, and sends once more only
    if the token changed and the body can be replayed."""

    __slots__ = ("_flow", "_replayable", "_retries", "_sent", "_source")

    def __init__(self, flow: BearerFlow, replayable: Callable[[], bool]) -> None:
        self._flow = flow
        self._source = flow.source
        self._replayable = replayable
        self._sent: Optional[Token] = None  # the token the request carries
        self._retries = 0

    def __repr__(self) -> str:
        return f"<Attempt of {self._source!r}>"

    def step(self, reply: Optional[Reply] = None) -> Optional[Token]:
        """Report the rejection ``reply`` (nothing, the first time) and read the token in this
        thread; returns the token to send the request (again) with, or ``None``."""
        if self._sent is None:
            self._sent = self._source.current()
            return self._sent
        return self._retry_with(self._reread() if self._rejected(reply) else None)

    def start_nowait(self) -> Optional[Token]:
        """The first step for an event loop, without a coroutine: the token when the source
        answers from memory; ``None``: a file read is due, continue with ``await astep()``."""
        self._sent = self._source._current_nowait()
        return self._sent

    async def astep(self, reply: Optional[Reply] = None, *, to_thread: ToThread) -> Optional[Token]:
        """[`step`][sa_token._flow.Attempt.step] for an event loop: a token answered from memory
        is taken at once; any file read or lock wait runs through ``to_thread`` (e.g.
        ``asyncio.to_thread``, ``anyio.to_thread.run_sync``)."""
        if self._sent is None:
            self._sent = self._source._current_nowait() or await to_thread(self._source.current)
            return self._sent
        if not self._rejected(reply):
            return None
        fresh = self._source._current_nowait() or await to_thread(self._reread)
        return self._retry_with(fresh)

    def _rejected(self, reply: Optional[Reply]) -> bool:
        """Whether a retry may follow the rejection ``reply``: it hit our token (which is then
        forgotten, if still current), retries are left, and the body can be sent again."""
        sent = self._sent
        if reply is None or sent is None or self._retries >= MAX_401_RETRIES:
            return False
        if not self._flow._carried(reply, sent):
            return False
        self._source.invalidate_if(sent)
        return self._replayable()  # if not, the next request reads the file again

    def _reread(self) -> Optional[Token]:
        try:
            return self._source.current()
        except TokenError as exc:  # the next request raises it again, when it asks for a token
            log.debug("sa-token: no token to retry with: %s", exc)
            return None

    def _retry_with(self, fresh: Optional[Token]) -> Optional[Token]:
        sent = self._sent
        if fresh is None or sent is None or fresh.value == sent.value:
            return None
        self._sent = fresh
        self._retries += 1
        count_auth_retry(self._flow.client)
        return fresh


# A token a server rejected while the file holds nothing newer is handed out again only after
# the kubelet's next write, or this long: 1 s, doubling, at most a minute (rotations are minutes
# apart; a longer pause only delays the recovery).
REJECTED_FIRST = 1.0
REJECTED_MAX = 60.0


class Rejections:
    """The one backoff of an integration that must hand out a token again after a server
    rejected it (kopf logs in again and again): `delay` says how long to wait for the next
    token first. Its count starts again with every token the server has not rejected."""

    def __init__(self) -> None:
        self._count = 0

    def delay(self, rejected: bool) -> float:
        """The wait before the token is handed out again (0 when it was not ``rejected``)."""
        if not rejected:
            self._count = 0
            return 0.0
        delay = min(REJECTED_FIRST * 2.0**self._count, REJECTED_MAX)
        self._count += 1
        return delay


async def next_token(source: TokenSource, timeout: float) -> None:
    """Return when ``source`` reads a new token (a rotation), or after ``timeout`` seconds."""
    import asyncio

    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def wake(_: Token) -> None:  # in the source's thread
        loop.call_soon_threadsafe(changed.set)

    unsubscribe = source.subscribe(wake)
    try:
        await asyncio.wait_for(changed.wait(), timeout)
    except asyncio.TimeoutError:
        pass
    finally:
        unsubscribe()


def read_nowait(source: TokenSource) -> Optional[Token]:
    """The token if the source can answer without I/O."""
    return source._current_nowait()


@contextmanager
def scrubbed(headers: Optional[MutableMapping[str, str]], name: str) -> Iterator[None]:
    """Take header ``name`` (our token) out of ``headers`` if an exception leaves the block, so
    that the request's header dict, which every frame of the traceback may hold, shows no
    token. For clients whose headers reach us as a plain dict (the Kubernetes clients)."""
    try:
        yield
    except BaseException:
        if headers is not None:
            headers.pop(name, None)
        raise


# ------------------------------------------------------------------------------ hosts -------
def parse_hosts(hosts: Union[str, Iterable[str]]) -> frozenset[HostKey]:
    """Parse ``hosts=`` entries (``host``, ``host:port``, ``[v6]``, ``[v6]:port``, bare ``v6``)."""
    if isinstance(hosts, str):
        hosts = [hosts]
    keys = {_parse_host(entry) for entry in hosts}
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
    host, port_text = _split_port(text, entry)
    if not host:
        raise ValueError(f"hosts entry {entry!r} has no host")
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"hosts entry {entry!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def _split_port(text: str, entry: str) -> tuple[str, Optional[str]]:
    """``host`` and its port's text (``None`` without one), from ``[v6]:port``, ``host:port``,
    ``[v6]``, a name, an IPv4 address or a bare IPv6 address."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"hosts entry {entry!r}: expected '[ipv6]' or '[ipv6]:port'")
        return host, (rest[1:] if rest else None)
    if text.count(":") == 1:
        host, _, port_text = text.partition(":")
        return host, port_text
    return text, None


def host_allowed(url: str, allowed: Optional[frozenset[HostKey]]) -> bool:
    """Whether a request to ``url`` may carry the token (always, when ``allowed`` is None)."""
    if allowed is None:
        return True
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:  # an invalid port: not a host we were told about
        return False
    return _allowed(parts.scheme, host, port, allowed)


def _allowed(scheme: str, host: Optional[str], port: Optional[int], allowed: frozenset[HostKey]) -> bool:
    if not host:
        return False
    host = host.lower()
    default = DEFAULT_PORTS.get(scheme.lower())
    if port is None or port == default:
        # No port, or the scheme's default: a bare entry matches, and so does "host:<default>".
        return (host, None) in allowed or (default is not None and (host, default) in allowed)
    return (host, port) in allowed


def _show(key: HostKey) -> str:
    host, port = key
    if ":" in host:
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"

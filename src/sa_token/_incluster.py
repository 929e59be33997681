"""What the Kubernetes client integrations share: in-cluster discovery, the namespace file, the
``refresh_api_key_hook`` objects, and the drivers of the bearer-token attempt (`sa_token._flow`)
for their REST clients. No client library is imported here."""

from __future__ import annotations

import asyncio
import errno
import os
import re
from collections.abc import Awaitable, Mapping
from typing import Any, Callable, Generic, Optional, TypeVar, Union

from . import _fmt
from ._ca import DEFAULT_CA_PATH, CABundle
from ._flow import UNAUTHORIZED, Attempt, BearerFlow, Reply, bearer, scrubbed
from ._read import describe, read_bounded
from ._source import DEFAULT_TOKEN_PATH, TokenSource, require_source
from ._token import Token
from .errors import TokenFileError

__all__ = [
    "DEFAULT_CA_PATH",
    "DEFAULT_NAMESPACE_PATH",
    "DEFAULT_TOKEN_PATH",
    "NAMESPACE_NEXT_TO_TOKEN",
    "SERVICE_HOST_ENV",
    "SERVICE_PORT_ENV",
    "InCluster",
    "Loader",
    "TokenHook",
    "asend",
    "join_host_port",
    "not_in_cluster_reason",
    "read_namespace",
    "resolve",
    "send",
    "service_url",
]

SERVICE_HOST_ENV = "KUBERNETES_SERVICE_HOST"
SERVICE_PORT_ENV = "KUBERNETES_SERVICE_PORT"
# The namespace file of the kube-api-access volume, next to the token and ca.crt.
DEFAULT_NAMESPACE_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# namespace_path's default: the `namespace` file next to the token (a projected volume with a
# downwardAPI item carries one), else the kube-api-access volume's.
NAMESPACE_NEXT_TO_TOKEN = "<next to the token>"
# The header the Kubernetes REST clients carry the token in (their auth settings' key).
_AUTHORIZATION = "authorization"
R = TypeVar("R")
C = TypeVar("C")  # a client library's Configuration
# A namespace name is a DNS-1123 label: at most 63 lowercase alphanumerics or '-'.
_NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# The namespace file holds one short name; anything larger is not a namespace file.
_MAX_NAMESPACE_BYTES = 4096


def join_host_port(host: str, port: str) -> str:
    """Go's ``net.JoinHostPort``: bracket IPv6 literals (and zoned addresses)."""
    if ":" in host or "%" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def not_in_cluster_reason(environ: Mapping[str, str]) -> Optional[str]:
    """Why ``environ`` does not look like a pod's, or None."""
    missing = [k for k in (SERVICE_HOST_ENV, SERVICE_PORT_ENV) if k not in environ]
    if missing:
        return (
            f"not running in a Kubernetes pod: {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set (the kubelet sets both in every container); "
            "outside a cluster, load a kubeconfig instead"
        )
    empty = [k for k in (SERVICE_HOST_ENV, SERVICE_PORT_ENV) if not environ[k].strip()]
    if empty:
        verb = "is" if len(empty) == 1 else "are"
        return f"not running in a Kubernetes pod: {' and '.join(empty)} {verb} empty"
    return None


class InCluster:
    """What every ``load_incluster_config`` needs, resolved once (see `resolve()`)."""

    def __init__(self, host: str, source: TokenSource, ca: CABundle, namespace: Optional[str]) -> None:
        self.host = host
        self.source = source
        self.ca = ca
        self.namespace = namespace


def resolve(  # noqa: PLR0917 - internal, called the same way by three modules
    environ: Optional[Mapping[str, str]],
    token_path: Union[str, os.PathLike[str]],
    ca_path: Union[str, os.PathLike[str]],
    namespace_path: Union[str, os.PathLike[str], None],
    source: Optional[TokenSource],
    ca: Optional[CABundle],
    not_in_cluster: type[Exception],
) -> InCluster:
    """The API server URL, token source, CA bundle and namespace of the pod's cluster.

    Raises ``not_in_cluster`` (a ``TokenError`` and the client's ``ConfigException``) when the
    service environment variables or the ServiceAccount files are missing, and the
    `sa_token.errors` types for files that exist but cannot be used. ``namespace`` is None
    when the namespace file does not exist (custom volumes often omit it);
    `NAMESPACE_NEXT_TO_TOKEN` looks for it beside the token first, then in the kube-api-access
    volume.
    """
    source = require_source(source, "load_incluster_config(source=...)")
    env = os.environ if environ is None else environ
    reason = not_in_cluster_reason(env)
    if reason is not None:
        raise not_in_cluster(reason)
    created: Optional[TokenSource] = None
    try:
        if source is None:
            source = created = TokenSource(token_path)
        if ca is None:
            ca = CABundle(ca_path)
    except TokenFileError as exc:
        if created is not None:
            created.close()
        if exc.errno == errno.ENOENT:  # no ServiceAccount volume here
            raise not_in_cluster(str(exc), path=exc.path) from exc  # type: ignore[call-arg]
        raise
    namespace = None
    if namespace_path == NAMESPACE_NEXT_TO_TOKEN:
        beside = os.path.join(os.path.dirname(source.path), "namespace")
        namespace_path = beside if os.path.lexists(beside) else DEFAULT_NAMESPACE_PATH
    if namespace_path is not None and os.path.lexists(namespace_path):
        namespace = read_namespace(namespace_path)
    return InCluster(service_url(env), source, ca, namespace)


def service_url(environ: Mapping[str, str]) -> str:
    """``https://host:port`` of the API server from the service environment variables (call
    `not_in_cluster_reason()` first)."""
    return "https://" + join_host_port(environ[SERVICE_HOST_ENV].strip(), environ[SERVICE_PORT_ENV].strip())


def read_namespace(path: Union[str, os.PathLike[str]] = DEFAULT_NAMESPACE_PATH) -> str:
    """The pod's namespace from the ServiceAccount volume's ``namespace`` file.

    Raises [`TokenFileError`][sa_token.TokenFileError] naming the file when it is missing, unreadable,
    empty or does not hold a namespace name."""
    p = os.fspath(path)
    shown = _fmt.path(p)
    try:  # bounded and non-blocking: a FIFO at the path must not hang load_incluster_config()
        raw = read_bounded(p, _MAX_NAMESPACE_BYTES)
    except OSError as exc:
        raise describe(p, exc, kind="namespace") from None
    name = raw.strip().decode("utf-8", "replace")
    if not name:
        raise TokenFileError(f"namespace file {shown} is empty", path=p, reason="empty")
    if not _NAMESPACE_RE.match(name):
        raise TokenFileError(
            f"namespace file {shown} does not hold a namespace name (a DNS-1123 label)",
            path=p,
            reason="malformed",
        )
    return name


class Loader(Generic[C]):
    """``load_incluster_config(configuration=None, *, token_path=, ca_path=, namespace_path=,
    source=, ca=, set_default=, environ=)``: configure a Kubernetes client for the pod's
    cluster (the options are `__call__`'s). ``sa_token.kubernetes``, ``.aio`` and ``.asyncio``
    each make one: the options, the checks and the steps are written once, here; a client
    differs by its ``Configuration``, its hook (sync, or reading in a worker thread), the
    ``api_key`` keys it reads and what installing the configuration as the default means."""

    def __init__(
        self, make: Callable[[], C], *, hook: type[TokenHook], keys: tuple[str, ...], client: str,
        not_in_cluster: type[Exception], install: Callable[[C], None],
    ) -> None:
        self._make, self._hook, self._keys, self._client = make, hook, keys, client
        self._not_in_cluster, self._install = not_in_cluster, install

    def __call__(
        self,
        configuration: Optional[C] = None,
        *,
        token_path: Union[str, os.PathLike[str]] = DEFAULT_TOKEN_PATH,
        ca_path: Union[str, os.PathLike[str]] = DEFAULT_CA_PATH,
        namespace_path: Union[str, os.PathLike[str], None] = NAMESPACE_NEXT_TO_TOKEN,
        source: Optional[TokenSource] = None,
        ca: Optional[CABundle] = None,
        set_default: Optional[bool] = None,
        environ: Optional[Mapping[str, str]] = None,
    ) -> C:
        """Configure the client for the API server of the pod's cluster; returns the configuration.

        * ``configuration``: fill this one (default: a new ``Configuration``).
        * ``token_path``/``ca_path``: the ServiceAccount token and CA bundle (the kube-api-access
          paths by default). Or pass your own ``source`` (a [`TokenSource`][sa_token.TokenSource],
          e.g. with an audience) and ``ca`` (a [`CABundle`][sa_token.CABundle]).
        * ``namespace_path``: the pod's namespace file; its content becomes
          ``configuration.namespace`` (None when the file does not exist; pass None to skip it).
          Default: the ``namespace`` file next to the token (a projected volume that carries
          one), else the kube-api-access volume's.
        * ``set_default``: install the configuration as the client's default (see the client's
          module: ``kubernetes`` also gets a default ``ApiClient``). Default: True when no
          ``configuration`` was given (like the client's own loader).
        * ``environ``: where to find ``KUBERNETES_SERVICE_HOST``/``_PORT`` (``os.environ``).

        Synchronous (it reads the token and CA files once): call it at startup. Raises the
        module's ``NotInClusterError`` outside a pod, and the `sa_token.errors` types for a
        token or CA file that exists but cannot be used.
        """
        found = resolve(environ, token_path, ca_path, namespace_path, source, ca, self._not_in_cluster)
        hook = self._hook(found.source, found.ca, self._keys, self._client)
        made = self._make() if configuration is None else configuration
        conf: Any = made
        conf.host = found.host
        conf.ssl_ca_cert = found.ca.path
        conf.namespace = found.namespace
        for key in hook.keys:
            conf.api_key_prefix.pop(key, None)  # the value carries "Bearer " itself
        hook._set(conf, hook.header())  # now: auth_settings() only looks for keys that exist
        conf.refresh_api_key_hook = hook
        if configuration is None if set_default is None else set_default:
            self._install(made)
        return made

    def __repr__(self) -> str:
        return f"<load_incluster_config for {self._client}>"


class TokenHook:
    """A ``Configuration.refresh_api_key_hook``: writes ``Bearer <current token>`` into the
    configuration it is called with, before each request.

    ``Configuration`` objects are deep-copied (``get_default_copy``, ``set_default``); the hook
    returns itself from ``__deepcopy__``, so every copy shares one [`TokenSource`][sa_token.TokenSource] (and
    [`CABundle`][sa_token.CABundle]), and each copy gets the current token written into its own ``api_key``.
    """

    def __init__(
        self, source: TokenSource, ca: Optional[CABundle], keys: tuple[str, ...], client: str
    ) -> None:
        self.source = source
        self.ca = ca
        self.keys = keys
        self.flow = BearerFlow(source, client=client)

    def header(self) -> str:
        return bearer(self.source.current())

    def _set(self, configuration: Any, value: str) -> None:
        api_key = configuration.api_key
        for key in self.keys:
            if api_key.get(key) != value:
                api_key[key] = value

    def __call__(self, configuration: Any) -> Optional[Awaitable[None]]:
        self._set(configuration, self.header())
        return None

    def __deepcopy__(self, memo: dict[int, Any]) -> TokenHook:
        return self

    def __copy__(self) -> TokenHook:
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.source!r})"


def send(
    flow: Optional[BearerFlow],
    url: str,
    headers: Optional[dict[str, Any]],
    transmit: Callable[[dict[str, Any]], R],
    api_exception: type[BaseException],
) -> R:
    """Drive one request of a Kubernetes REST client through the attempt.

    The request is ours when the client put an ``authorization`` header in it (from our hook's
    ``api_key``); we then send it with the token the attempt read, and once more after a 401
    (answered, or raised as ``api_exception`` by clients before 37) with a re-read token. Each
    send gets its own copy of ``headers`` (the REST clients edit them), and an exception
    leaving takes the token out of both dicts.
    """
    attempt = _ours(flow, url, headers)
    if attempt is None or headers is None:
        return transmit(headers)  # type: ignore[arg-type]
    held = attempt.step()
    with scrubbed(headers, _AUTHORIZATION):
        while True:
            answer = _Answer.of(transmit, headers, held, api_exception)
            held = attempt.step(Reply()) if answer.rejected else None
            if held is None:
                kept: R = answer.stands()
                return kept
            release(answer.response)


async def asend(
    flow: Optional[BearerFlow],
    url: str,
    headers: Optional[dict[str, Any]],
    transmit: Callable[[dict[str, Any]], Awaitable[R]],
    api_exception: type[BaseException],
) -> R:
    """[`send`][sa_token._incluster.send] for the asyncio clients: token reads that need the
    file (and the lock wait after a 401) run in a worker thread, never on the event loop."""
    attempt = _ours(flow, url, headers)
    if attempt is None or headers is None:
        return await transmit(headers)  # type: ignore[arg-type]
    held = await attempt.astep(to_thread=asyncio.to_thread)
    with scrubbed(headers, _AUTHORIZATION):
        while True:
            answer = await _Answer.aof(transmit, headers, held, api_exception)
            held = await attempt.astep(Reply(), to_thread=asyncio.to_thread) if answer.rejected else None
            if held is None:
                kept: R = answer.stands()
                return kept
            release(answer.response)


def _ours(flow: Optional[BearerFlow], url: str, headers: Optional[dict[str, Any]]) -> Optional[Attempt]:
    if flow is None or headers is None or _AUTHORIZATION not in headers:
        return None
    return flow.attempt(url)


class _Answer:
    """What one send gave: a response, or an ``api_exception`` for a 401 (kubernetes < 37
    raises it), and whether it is a rejection. Any other exception leaves at once."""

    __slots__ = ("error", "rejected", "response")

    def __init__(self, response: Any, error: Optional[BaseException]) -> None:
        self.response = response
        self.error = error
        self.rejected = error is not None or getattr(response, "status", None) == UNAUTHORIZED

    @classmethod
    def of(cls, transmit: Callable[[dict[str, Any]], Any], headers: dict[str, Any], held: Optional[Token],
           api_exception: type[BaseException]) -> _Answer:
        carrying = _with_token(headers, held)
        with scrubbed(carrying, _AUTHORIZATION):
            try:
                return cls(transmit(carrying), None)
            except api_exception as exc:
                return cls._raised(exc, carrying)

    @classmethod
    async def aof(cls, transmit: Callable[[dict[str, Any]], Awaitable[Any]], headers: dict[str, Any],
                  held: Optional[Token], api_exception: type[BaseException]) -> _Answer:
        carrying = _with_token(headers, held)
        with scrubbed(carrying, _AUTHORIZATION):
            try:
                return cls(await transmit(carrying), None)
            except api_exception as exc:
                return cls._raised(exc, carrying)

    @classmethod
    def _raised(cls, exc: BaseException, carrying: dict[str, Any]) -> _Answer:
        if getattr(exc, "status", None) != UNAUTHORIZED:
            raise exc
        carrying.pop(_AUTHORIZATION, None)  # kept by the traceback of the exception we keep
        return cls(None, exc)

    def stands(self) -> Any:
        """The answer to hand back: the response, or the 401 exception raised again."""
        if self.error is not None:
            raise self.error
        return self.response


def _with_token(headers: dict[str, Any], held: Optional[Token]) -> dict[str, Any]:
    assert held is not None  # an attempt's first step always reads a token (or raises)
    carrying = dict(headers)
    carrying[_AUTHORIZATION] = bearer(held)
    return carrying


def release(response: Any) -> None:
    """Give a 401 answer's connection back to the pool (urllib3 or aiohttp, wrapped or not)."""
    raw = getattr(response, "response", response)
    try:
        if hasattr(raw, "drain_conn"):  # urllib3
            raw.drain_conn()
            raw.release_conn()
        elif hasattr(raw, "release"):  # aiohttp: returns the connection, or closes it
            raw.release()
    except Exception:  # noqa: S110 - the connection is simply not reused
        pass

"""The adapter that gives a `VaultAuth`'s `hvac.Client` the current Vault token (set per
request from the lease, never stored on the client) and logs in again after a 403."""

from __future__ import annotations

import threading
from typing import Any, Optional, Protocol

import requests
from hvac.adapters import JSONAdapter  # (sa_token.vault imports this after its install hint)

from ._lease import Lease, LeaseKeeper
from ._vault_login import FORBIDDEN, _Issued


class _Vault(Protocol):
    """What the adapter uses of its `sa_token.vault.VaultAuth`."""

    _keeper: LeaseKeeper[_Issued]

    def _after_403(self, sent: Lease[_Issued]) -> Optional[Lease[_Issued]]: ...

__all__ = ["_Adapter"]


class _Adapter(JSONAdapter):
    """hvac's JSON adapter with the token of a `VaultAuth`, set per request from the lease (a
    thread-local holds the one being sent); a 403 is checked and retried once."""

    def __init__(self, *args: Any, vault: _Vault, **kwargs: Any) -> None:
        self._vault = vault
        self._sending = threading.local()
        super().__init__(*args, **kwargs)

    @property
    def token(self) -> str:  # RawAdapter.request reads it for the X-Vault-Token header
        lease = getattr(self._sending, "lease", None) or self._vault._keeper.current()
        return str(lease.credential.token)

    @token.setter
    def token(self, value: Optional[str]) -> None:
        if value:
            raise AttributeError("the token of a VaultAuth client is managed by VaultAuth; "
                                 "use a plain hvac.Client for another token")

    def request(self, method: str, url: str, headers: Any = None, raise_exception: bool = True,
                **kwargs: Any) -> Any:
        lease = self._vault._keeper.current()
        resp = self._send(lease, method, url, headers, kwargs)
        if resp.status_code == FORBIDDEN:
            retry = self._vault._after_403(lease)
            if retry is not None:
                resp = self._send(retry, method, url, headers, kwargs)
        if not resp.ok and raise_exception and not self.ignore_exceptions:
            self._raise_for_error(method, url, resp)  # type: ignore[attr-defined]
        if resp.status_code == 200:
            try:
                return resp.json()
            except ValueError:
                pass
        return resp

    def _send(self, lease: Lease[_Issued], method: str, url: str, headers: Any, kwargs: Any) -> Any:
        self._sending.lease = lease
        try:
            return super(JSONAdapter, self).request(  # RawAdapter's: a Response, never raising
                method, url, headers=dict(headers) if headers else None, raise_exception=False, **kwargs)
        except requests.RequestException as exc:
            error = exc
        finally:
            self._sending.lease = None
        # Raised without the frames below this one: they hold the headers, token included.
        error.__context__ = None
        error.__suppress_context__ = True
        raise error.with_traceback(None)

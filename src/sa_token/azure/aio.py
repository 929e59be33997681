"""Azure Workload Identity for asyncio: `sa_token.azure.WorkloadIdentityCredential` on
`azure.identity.aio`.

```python
from sa_token.azure.aio import WorkloadIdentityCredential

async with WorkloadIdentityCredential() as credential:
    token = await credential.get_token("https://storage.azure.com/.default")
```

A re-read of the token file (at a rotation, a deadline) runs in a worker thread before the
credential asks Microsoft Entra ID, so the event loop never waits on the file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from typing import Any, Callable, Optional, TypeVar

try:
    import aiohttp  # noqa: F401 - azure-core's async transport
    from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import CredentialUnavailableError
    from azure.identity.aio import ClientAssertionCredential
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "sa_token.azure.aio needs the azure-identity and aiohttp packages: pip install 'sa-token[azure]'"
    ) from exc

from sa_token.azure import EntraIDError, Workload
from sa_token.errors import TokenError

__all__ = ["WorkloadIdentityCredential"]

T = TypeVar("T", AccessToken, AccessTokenInfo)


class WorkloadIdentityCredential(Workload, ClientAssertionCredential):
    """An `AsyncTokenCredential` that presents the current projected token to Microsoft Entra
    ID; arguments as for the sync
    [`WorkloadIdentityCredential`][sa_token.azure.WorkloadIdentityCredential]."""


    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return await self._observed(super().get_token, *scopes, **kwargs)

    async def get_token_info(
        self, *scopes: str, options: Optional[TokenRequestOptions] = None
    ) -> AccessTokenInfo:
        return await self._observed(super().get_token_info, *scopes, options=options)

    async def _observed(self, call: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        if self.source.token_nowait() is None:  # a file read is due: do it off the loop
            with contextlib.suppress(TokenError):  # raised again, if still true, when the token is needed
                await self.source.atoken()
        try:
            token = await call(*args, **kwargs)
        except CredentialUnavailableError:
            raise
        except ClientAuthenticationError as exc:
            refused = self._refused(exc)  # raised below, outside the handler: no traceback kept
        else:
            return self._granted(token)
        raise EntraIDError(**refused) from None

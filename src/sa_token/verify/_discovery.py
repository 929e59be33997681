"""The issuer tokens must carry: given, or discovered once from the API server's
``/.well-known/openid-configuration`` (one request at a time; after a failure, tried again
after a backoff of 1 s doubling to 60 s, never remembered for good)."""

from __future__ import annotations

import math
from typing import Optional

from sa_token import _fmt

from ._cache import Flights
from ._http import Endpoint, refused
from ._jwks import NeedsIO
from .errors import VerifierUnavailableError

__all__ = ["DISCOVERY_PATH", "Discovery"]

DISCOVERY_PATH = "/.well-known/openid-configuration"
# After a failed discovery: the first retry waits 1 s, doubling to a minute (a down API server
# sees one try a minute from each verifier).
RETRY_FIRST, RETRY_MAX = 1.0, 60.0


class Discovery:
    def __init__(self, api: Optional[Endpoint], issuer: Optional[str]) -> None:
        self.api, self.issuer = api, issuer
        self._flights = Flights()
        self._retry = (-math.inf, 0, "")  # retry_at, failures, the last error: replaced whole

    def issuer_for(self, now: float, io: bool) -> str:
        """The issuer, discovering it if needed (`NeedsIO` when ``io`` is False)."""
        if self.issuer is not None:
            return self.issuer
        retry_at, _, error = self._retry
        if now < retry_at:
            wait = _fmt.duration(retry_at - now)
            raise VerifierUnavailableError(f"the issuer could not be discovered: {error}; next try in {wait}")
        if not io:
            raise NeedsIO
        return self._flights.run(None, lambda: self._fetch(now))

    def _fetch(self, now: float) -> str:
        if self.issuer is not None:  # found by the flight this one waited behind
            return self.issuer
        assert self.api is not None  # a verifier without an API server is given its issuer
        failure: Optional[VerifierUnavailableError] = None
        try:
            response = self.api.request("GET", DISCOVERY_PATH, "OIDC discovery")
            doc = response.body if isinstance(response.body, dict) else {}
            if response.status != 200:
                failure = refused(response, "OIDC discovery", self.api.url)
            elif not isinstance(doc.get("issuer"), str) or not doc["issuer"]:
                failure = VerifierUnavailableError(f"OIDC discovery at {self.api.url}: no issuer named")
            else:
                self.issuer = doc["issuer"]
                return self.issuer
        except VerifierUnavailableError as exc:
            failure = exc
        failures = self._retry[1]
        self._retry = (now + min(RETRY_MAX, RETRY_FIRST * 2**failures), failures + 1, _fmt.text(failure))
        raise failure

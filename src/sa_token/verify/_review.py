"""TokenReview: the API server decides (a deleted pod's or ServiceAccount's token is refused).

``POST /apis/authentication.k8s.io/v1/tokenreviews`` with ``spec.audiences``; a token passes
only when ``status.authenticated`` is true **and** ``status.audiences`` names one of the
audiences asked for: an API server that ignores ``spec.audiences`` answers with none, and
must not pass a token meant for someone else (the TokenReviewStatus API documentation). At
most `MAX_IN_FLIGHT` reviews run at once; a call that cannot get a slot within the request
timeout is unavailable, not refused. Caching is the verifier's (`Verdicts`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

from sa_token._cloud import scrub

from ._http import Endpoint, refused
from ._identity import Identity, from_review
from ._jwt import Parsed, Presented
from .errors import TokenRefusedError, VerifierUnavailableError

__all__ = ["MAX_IN_FLIGHT", "REVIEW_PATH", "Reviewer"]

REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
# Reviews in flight at once per verifier: a flood of distinct well-formed tokens must not turn
# into a flood on the API server (ai-dynamo/modelexpress#530 proposes 8-16 permits).
MAX_IN_FLIGHT = 16


def _body(presented: Presented, audiences: Sequence[str]) -> bytes:
    return json.dumps(
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": presented.value, "audiences": list(audiences)},
        }
    ).encode()


class Reviewer:
    def __init__(self, endpoint: Endpoint, audiences: Sequence[str]) -> None:
        self.endpoint, self.audiences = endpoint, tuple(audiences)
        self._slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)

    def review(self, presented: Presented, parsed: Parsed) -> Identity:
        """The API server's verdict: an `Identity`, or `TokenRefusedError`; errors (unreachable,
        5xx, the verifier's own token refused) are `VerifierUnavailableError`."""
        if not self._slots.acquire(timeout=self.endpoint.timeout):
            raise VerifierUnavailableError(f"{MAX_IN_FLIGHT} TokenReviews are in flight already")
        try:
            response = self.endpoint.request(
                "POST", REVIEW_PATH, "TokenReview", lambda: _body(presented, self.audiences)
            )
        finally:
            self._slots.release()
        if response.status not in (200, 201) or not isinstance(response.body, dict):
            raise refused(response, "TokenReview", self.endpoint.url)
        return self._verdict(response.body.get("status"), parsed)

    def _verdict(self, status: Any, parsed: Parsed) -> Identity:
        if not isinstance(status, dict):
            raise VerifierUnavailableError("TokenReview: the answer has no status")
        if status.get("authenticated") is not True:
            said = status.get("error")
            why = scrub(said) if isinstance(said, str) and said else "not authenticated"
            raise TokenRefusedError(f"the API server refused the token: {why}")
        granted = status.get("audiences")
        granted = granted if isinstance(granted, list) else []
        matched = tuple(a for a in self.audiences if a in granted)
        if not matched:
            raise TokenRefusedError(
                "the API server authenticated the token without confirming the audiences asked for "
                f"({', '.join(self.audiences)}): it may ignore spec.audiences, so the token is refused"
            )
        user = status.get("user")
        return from_review(user if isinstance(user, dict) else {}, parsed.claims, matched)

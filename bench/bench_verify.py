#!/usr/bin/env python3
"""The receiving side (issue 21): what `sa_token.verify.TokenVerifier` costs, and what floods
cost the API server.

Measured side by side in one process, against the kit's FakeAPIServer (TLS) on the loopback:

* ``new_ratio``: verifying a token not seen before with the keys in hand (the RSA verify is the
  cost) against a bare ``jwt.decode`` with the key (same checks: signature, exp, aud, iss),
  interleaved rounds, median; target <= 1.2x;
* ``hit_s``: a token verified before (the verdict cache), per call; target under 5 us;
* floods: ``garbage_requests`` (1000 unique garbage strings: requests the API server saw,
  target 0) and ``kid_fetches`` (1000 tokens with random ``kid``s after warm-up: JWKS fetches,
  target 1);
* TokenReview: reviews per second through the in-flight limit (16), and with each token verified
  many times by many threads, the reviews the cache lets through (one per distinct token).
"""

from __future__ import annotations

import gc
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from _common import fmt_s, sizes, standalone, target

SIZES = {
    "full": {"tokens": 2000, "rounds": 7, "hits": 200000, "reviews": 400, "threads": 16},
    "quick": {"tokens": 300, "rounds": 5, "hits": 50000, "reviews": 100, "threads": 8},
    "smoke": {"tokens": 30, "rounds": 2, "hits": 2000, "reviews": 20, "threads": 4},
}
NEW_RATIO_MAX = 1.2  # a new token: at most 1.2x a bare jwt.decode (the RSA verify dominates)
HIT_MAX = 5e-6  # a repeated token: under 5 us
AUD = "payments"


def _per_call(fn: Any, items: list[str]) -> float:
    t0 = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - t0) / len(items)


def _side_by_side(cluster: Any, sz: dict[str, Any]) -> dict[str, Any]:
    import jwt

    iss = cluster.issuer
    key, issuer = iss.public_key, iss.issuer
    v = cluster.verifier(issuer=issuer)
    v.verify(cluster.token())  # warm: keys in hand
    bare, ours = [], []
    for _ in range(sz["rounds"]):
        a = [cluster.token() for _ in range(sz["tokens"])]
        b = [cluster.token() for _ in range(sz["tokens"])]
        gc.collect()
        bare.append(_per_call(
            lambda t: jwt.decode(t, key, algorithms=["RS256"], audience=AUD, issuer=issuer, leeway=60), a))
        ours.append(_per_call(v.verify, b))
    hit_token = cluster.token()
    v.verify(hit_token)
    hits = [hit_token] * sz["hits"]
    hit = min(_per_call(v.verify, hits) for _ in range(3))
    bare_s, ours_s = statistics.median(bare), statistics.median(ours)
    return {"bare_decode_s": bare_s, "new_s": ours_s, "new_ratio": ours_s / bare_s, "hit_s": hit,
            "new_per_s_per_core": 1 / ours_s, "hits_per_s_per_core": 1 / hit}


def _floods(cluster: Any) -> dict[str, Any]:
    import jwt

    v = cluster.verifier()
    before = cluster.calls()
    for i in range(1000):
        try:
            v.verify(f"garbage-{uuid.uuid4()}.{i}")
        except Exception:
            pass
    garbage = cluster.calls() - before
    v.verify(cluster.token())  # warm
    fetches = cluster.server.count("/openid/v1/jwks")
    claims = cluster.issuer.claims(audiences=[AUD])
    for _ in range(1000):
        t = jwt.encode(claims, cluster.issuer._key, algorithm="RS256", headers={"kid": str(uuid.uuid4())})
        try:
            v.verify(t)
        except Exception:
            pass
    return {"garbage_requests": garbage, "kid_fetches": cluster.server.count("/openid/v1/jwks") - fetches}


def _reviews(cluster: Any, sz: dict[str, Any]) -> dict[str, Any]:
    v = cluster.verifier(method="tokenreview", issuer=cluster.issuer.issuer)
    tokens = [cluster.token() for _ in range(sz["reviews"])]
    chunks = [tokens[i:: sz["threads"]] for i in range(sz["threads"])]

    def run(part: list[str], repeat: int) -> None:
        for _ in range(repeat):
            for t in part:
                v.verify(t)

    def timed(repeat: int) -> float:
        threads = [threading.Thread(target=run, args=(c, repeat)) for c in chunks]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0

    before = len(cluster.server.reviews)
    first = timed(1)  # every token new: one review each
    again = timed(10)  # the same tokens ten times more: the cache answers
    reviews = len(cluster.server.reviews) - before
    return {"reviews_per_s": len(tokens) / first, "reviews": reviews, "distinct_tokens": len(tokens),
            "cached_verifications_per_s": 10 * len(tokens) / again}


def run(*, quick: bool) -> dict[str, Any]:
    from sa_token.testing import TokenIssuer

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' cluster helper
    from tests._verify_kit import cluster

    sz = sizes(SIZES, quick)
    tmp = tempfile.mkdtemp(prefix="sa-token-bench-verify-")
    try:
        with cluster(Path(tmp), TokenIssuer()) as c:
            return {**_side_by_side(c, sz), **_floods(c), **_reviews(c, sz)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        target("verify a new token / bare jwt.decode (median)", res["new_ratio"], "<= 1.2x",
               res["new_ratio"] <= NEW_RATIO_MAX),
        target("verify a repeated token (cache hit)", res["hit_s"], "< 5 us", res["hit_s"] < HIT_MAX),
        target("1000 unique garbage tokens: API server requests", res["garbage_requests"], "0",
               res["garbage_requests"] == 0),
        target("1000 random-kid tokens: JWKS fetches", res["kid_fetches"], "<= 1", res["kid_fetches"] <= 1),
        target("TokenReviews for tokens verified 11 times each", res["reviews"], "one per token",
               res["reviews"] == res["distinct_tokens"]),
    ]


def report(res: dict[str, Any]) -> list[str]:
    return [
        "Verifying incoming tokens (sa_token.verify, JWKS and TokenReview against the fake API server)",
        f"  new token {fmt_s(res['new_s'])} vs bare jwt.decode {fmt_s(res['bare_decode_s'])} "
        f"({res['new_ratio']:.2f}x); repeated token {fmt_s(res['hit_s'])}",
        f"  per core: {res['new_per_s_per_core']:,.0f} new tokens/s, "
        f"{res['hits_per_s_per_core']:,.0f} repeats/s",
        f"  floods: 1000 garbage -> {res['garbage_requests']} requests; 1000 random kids -> "
        f"{res['kid_fetches']} JWKS fetch(es)",
        f"  TokenReview: {res['reviews_per_s']:,.0f} reviews/s (16 in flight at most); "
        f"{res['reviews']} reviews for {res['distinct_tokens']} tokens verified 11 times; "
        f"{res['cached_verifications_per_s']:,.0f} cached verifications/s",
    ]


if __name__ == "__main__":
    standalone(run, targets)

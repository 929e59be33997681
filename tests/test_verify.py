"""sa_token.verify.TokenVerifier against the kit's FakeAPIServer (TLS, RS256, discovery, JWKS
with max-age, TokenReview with audiences): what each check costs the API server, caching,
key rotation, outages, fork, and that no token leaks into an error, a repr or a traceback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from tests._verify_kit import AUDIENCE, Cluster, cluster, dead_url

from sa_token import MalformedTokenError, TokenExpiredError
from sa_token.errors import ConfigurationError
from sa_token.testing import TokenIssuer, assert_no_token
from sa_token.verify import (
    BadSignatureError,
    ExpiredJWTError,
    Identity,
    MalformedJWTError,
    PrematureJWTError,
    TokenRefusedError,
    TokenVerifier,
    UnknownKeyError,
    UntrustedIssuerError,
    VerificationError,
    VerifierUnavailableError,
    WrongAudienceError,
)

JWKS = "/openid/v1/jwks"
DISCOVERY = "/.well-known/openid-configuration"
REVIEW = "/apis/authentication.k8s.io/v1/tokenreviews"


@pytest.fixture
def c(tmp_path: Path, token_issuer: TokenIssuer) -> Iterator[Cluster]:
    with cluster(tmp_path, token_issuer) as found:
        yield found


@pytest.fixture
def own_issuer() -> TokenIssuer:
    return TokenIssuer()  # its keys get rotated: not the session's issuer


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, object], claims: dict[str, object], secret: bytes = b"") -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest() if secret else b""
    return f"{signing_input}.{_b64(sig)}"


# ----------------------------------------------------------------------- JWKS ------------
def test_a_valid_token_gives_its_identity_from_discovery_and_in_cluster_keys(c: Cluster) -> None:
    v = c.verifier()
    claims = c.issuer.claims(audiences=["other", AUDIENCE], namespace="shop", service_account="api", pod="api-7")
    identity = v.verify(c.issuer.sign(claims))
    k8s = claims["kubernetes.io"]
    assert identity == Identity(
        username="system:serviceaccount:shop:api",
        namespace="shop",
        service_account="api",
        service_account_uid=k8s["serviceaccount"]["uid"],
        pod="api-7",
        pod_uid=k8s["pod"]["uid"],
        node="node-1",
        audiences=(AUDIENCE,),
        issuer=c.issuer.issuer,
        jti=claims["jti"],
        issued_at=identity.issued_at,
        expires_at=identity.expires_at,
        method="jwks",
    )
    assert identity.expires_at is not None and identity.expires_at.timestamp() == claims["exp"]
    assert identity.issued_at is not None and identity.issued_at.timestamp() == claims["iat"]
    # The discovery document's jwks_uri names an external address (.invalid): not followed.
    assert (c.server.count(DISCOVERY), c.server.count(JWKS)) == (1, 1)
    # Both requests carried the verifier's own (current) bearer: the server authenticated them.
    assert all(r.authorized for r in c.server.requests)


def test_the_same_token_again_is_answered_from_memory(c: Cluster) -> None:
    v = c.verifier()
    token = c.token()
    first = v.verify(token)
    before = len(c.server.requests)
    assert all(v.verify(token) is first for _ in range(100))
    assert len(c.server.requests) == before


@pytest.mark.parametrize(("claims", "error", "reason"), [
    ({"audiences": ["someone-else"]}, WrongAudienceError, "audience-mismatch"),
    ({"now": time.time() - 3 * 3600}, ExpiredJWTError, "expired"),
    ({"now": time.time() + 3600}, PrematureJWTError, "not-yet-valid"),
])
def test_cheap_checks_refuse_before_any_request(c: Cluster, claims: dict[str, object], error: type, reason: str) -> None:
    v = c.verifier(issuer=c.issuer.issuer)
    claims.setdefault("audiences", [AUDIENCE])
    with pytest.raises(error) as info:
        v.verify(c.issuer.issue(**claims))
    assert info.value.reason == reason and info.value.caller_fault
    assert c.calls() == 0


def test_errors_are_also_the_core_error_types() -> None:
    assert issubclass(ExpiredJWTError, TokenExpiredError)
    assert issubclass(MalformedJWTError, MalformedTokenError) and issubclass(MalformedJWTError, ValueError)
    assert issubclass(VerifierUnavailableError, VerificationError)
    assert not VerifierUnavailableError.caller_fault


def test_a_foreign_issuer_is_refused_after_discovery_and_before_keys(c: Cluster) -> None:
    v = c.verifier()
    other = TokenIssuer(issuer="https://oidc.example.invalid/cluster-2", key_pem=c.issuer.private_key_pem)
    with pytest.raises(UntrustedIssuerError, match=r"oidc\.example\.invalid"):
        v.verify(other.issue(audiences=[AUDIENCE]))
    assert (c.server.count(DISCOVERY), c.server.count(JWKS)) == (1, 0)


def test_a_thousand_unique_garbage_strings_make_no_request(c: Cluster) -> None:
    for method in ("jwks", "tokenreview"):
        v = c.verifier(method=method)
        for i in range(1000):
            garbage = [f"garbage-{uuid.uuid4()}", f"eyJ{i}.x.y", "a" * 20000, f"{_b64(b'[1]')}.e30.", ""][i % 5]
            with pytest.raises(MalformedJWTError):
                v.verify(garbage)
    assert c.calls() == 0


def test_alg_none_and_hs256_signed_with_the_public_key_are_refused_before_keys(c: Cluster) -> None:
    v = c.verifier(issuer=c.issuer.issuer)
    claims = c.issuer.claims(audiences=[AUDIENCE])
    header = {"alg": "none", "kid": c.issuer.kid}
    with pytest.raises(MalformedJWTError, match=r"'none' is not an asymmetric"):
        v.verify(_unsigned(header, claims))
    # The classic algorithm confusion: HMAC with the issuer's public key (PEM) as the secret.
    forged = _unsigned({"alg": "HS256", "kid": c.issuer.kid}, claims, c.issuer.public_key_pem)
    with pytest.raises(MalformedJWTError, match=r"'HS256' is not an asymmetric"):
        v.verify(forged)
    assert c.calls() == 0


def test_a_forged_signature_is_refused(c: Cluster) -> None:
    v = c.verifier()
    stranger = TokenIssuer(issuer=c.issuer.issuer)  # same issuer name, another key, same kid claimed
    claims = c.issuer.claims(audiences=[AUDIENCE])
    forged = jwt.encode(claims, stranger._key, algorithm="RS256", headers={"kid": c.issuer.kid})
    with pytest.raises(BadSignatureError):
        v.verify(forged)
    head, _, sig = c.token().split(".")
    tampered = f"{head}.{_b64(json.dumps({**claims, 'sub': 'system:serviceaccount:kube-system:admin'}).encode())}.{sig}"
    with pytest.raises(BadSignatureError):
        v.verify(tampered)


def test_a_thousand_random_kids_make_at_most_one_refetch(c: Cluster) -> None:
    v = c.verifier()
    v.verify(c.token())  # warm: one discovery, one fetch
    claims = c.issuer.claims(audiences=[AUDIENCE])
    kids = [jwt.encode(claims, c.issuer._key, algorithm="RS256", headers={"kid": str(uuid.uuid4())})
            for _ in range(1000)]
    errors: list[BaseException] = []

    def flood(part: list[str]) -> None:
        for t in part:
            try:
                v.verify(t)
            except UnknownKeyError:
                pass
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=flood, args=(kids[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert c.server.count(JWKS) <= 2  # the warm-up, and at most one refetch for all of them
    assert v.verify(c.token()).method == "jwks"  # known keys kept working


def test_key_rotation_finds_a_new_key_at_once_then_refetches_at_most_every_30s(
    tmp_path: Path, own_issuer: TokenIssuer
) -> None:
    clock = Clock()
    with cluster(tmp_path, own_issuer) as c:
        v = c.verifier(clock=clock)
        v.verify(c.token())
        own_issuer.rotate_key()  # the API server starts signing with a second key
        assert v.verify(c.token()).username  # a kid miss refetches at once
        assert c.server.count(JWKS) == 2
        own_issuer.rotate_key()
        clock.now += 10
        with pytest.raises(UnknownKeyError):
            v.verify(c.token())  # within 30 s of the last miss's refetch
        assert c.server.count(JWKS) == 2
        clock.now += 21
        assert v.verify(c.token())
        assert c.server.count(JWKS) == 3


def test_keys_refresh_in_the_background_at_max_age_clamped(tmp_path: Path, own_issuer: TokenIssuer) -> None:
    clock = Clock()
    with cluster(tmp_path, own_issuer) as c:
        c.server.jwks_max_age = 0  # means 60 s
        v = c.verifier(clock=clock)
        v.verify(c.token())
        clock.now += 59
        v.verify(c.token())
        assert c.server.count(JWKS) == 1
        clock.now += 2
        c.server.review_delay = 0  # (reviews only; the JWKS answer is immediate)
        v.verify(c.token())  # answered with the keys in hand; a refresh starts behind it
        deadline = time.monotonic() + 10
        while c.server.count(JWKS) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.server.count(JWKS) == 2


def test_a_jwks_outage_after_warm_up_keeps_verifying(tmp_path: Path, own_issuer: TokenIssuer) -> None:
    clock = Clock()
    with cluster(tmp_path, own_issuer) as c:
        v = c.verifier(clock=clock)
        v.verify(c.token())
        c.server.close()  # the API server goes away
        for _ in range(3):
            clock.now += 3601  # past max-age: each call starts a refresh that fails
            fresh = own_issuer.issue(audiences=[AUDIENCE], now=clock.now)
            assert v.verify(fresh).method == "jwks"  # the last good keys keep serving
            time.sleep(0.2)  # let the background refresh fail
        clock.now += 24 * 3600  # past the stale-if-error bound
        with pytest.raises(VerifierUnavailableError, match="could not be fetched"):
            v.verify(own_issuer.issue(audiences=[AUDIENCE], now=clock.now))


def test_an_unreachable_api_server_is_unavailable_never_refused(c: Cluster) -> None:
    v = c.verifier(api_server=dead_url())  # the constructor does not care
    with pytest.raises(VerifierUnavailableError) as info:
        v.verify(c.token())
    assert info.value.reason == "unavailable" and not info.value.caller_fault
    with pytest.raises(VerifierUnavailableError, match="next try in"):  # backoff: no request per call
        v.verify(c.token())


def test_the_verifiers_own_token_refused_by_rbac_is_unavailable(c: Cluster) -> None:
    c.server.discovery_allowed = False
    v = c.verifier()
    with pytest.raises(VerifierUnavailableError, match=r"HTTP 403.*RBAC"):
        v.verify(c.token())


def test_the_verifiers_own_token_rotates(c: Cluster) -> None:
    v = c.verifier(method="tokenreview")
    v.verify(c.token())
    sent = c.server.requests[-1].token_jti
    c.kubelet.rotate()
    time.sleep(0.2)  # inotify
    v.verify(c.token())
    assert c.server.requests[-1].token_jti != sent


def test_no_api_server_outside_a_cluster_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="KUBERNETES_SERVICE_HOST"):
        TokenVerifier(audience=AUDIENCE, environ={})
    with pytest.raises(ValueError, match="method"):
        TokenVerifier(audience=AUDIENCE, method="magic", api_server="https://x")
    with pytest.raises(ValueError, match="audience"):
        TokenVerifier(audience=[], api_server="https://x")


def test_a_thousand_concurrent_first_calls_make_one_discovery_and_one_fetch(c: Cluster) -> None:
    v = c.verifier()
    tokens = [c.token() for _ in range(20)]

    async def main() -> list[Identity]:
        return await asyncio.gather(*(v.averify(tokens[i % 20]) for i in range(1000)))

    identities = asyncio.run(main())
    assert len(identities) == 1000
    assert (c.server.count(DISCOVERY), c.server.count(JWKS)) == (1, 1)


def test_external_jwks_url_gets_no_bearer(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    from sa_token.testing.apiserver import FakeAPIServer

    with cluster(tmp_path, token_issuer) as c, FakeAPIServer(token_issuer, tls=False) as public:
        v = TokenVerifier(audience=AUDIENCE, issuer=token_issuer.issuer, jwks_url=f"{public.url}/openid/v1/jwks")
        # The fake server authenticates every request: without a bearer the JWKS GET is refused,
        # which shows none was sent to the other host.
        with pytest.raises(VerifierUnavailableError, match="HTTP 401"):
            v.verify(c.token())
        assert [r.scheme for r in public.requests] == [None]
        v.close()


# ----------------------------------------------------------------------- TokenReview -----
def test_tokenreview_identity_comes_from_the_api_server(c: Cluster) -> None:
    v = c.verifier(method="tokenreview")
    claims = c.issuer.claims(audiences=[AUDIENCE], namespace="shop", service_account="api", pod="api-7")
    identity = v.verify(c.issuer.sign(claims))
    assert identity.method == "tokenreview"
    assert (identity.username, identity.namespace, identity.service_account) == (
        "system:serviceaccount:shop:api", "shop", "api")
    assert identity.pod == "api-7" and identity.pod_uid == claims["kubernetes.io"]["pod"]["uid"]
    assert identity.jti == claims["jti"]
    assert identity.service_account_uid == claims["kubernetes.io"]["serviceaccount"]["uid"]
    assert c.server.reviews[-1].audiences == (AUDIENCE,)


def test_tokenreview_refuses_a_deleted_pods_token_and_caches_answers_for_10s(c: Cluster) -> None:
    clock = Clock()
    v = c.verifier(method="tokenreview", clock=clock)
    token = c.token(pod="doomed")
    v.verify(token)
    v.verify(token)
    assert len(c.server.reviews) == 1  # cached
    c.server.delete_pod("doomed")
    v.verify(token)  # still within 10 s: the cached answer
    clock.now += 10.5
    with pytest.raises(TokenRefusedError, match="invalidated"):
        v.verify(token)
    with pytest.raises(TokenRefusedError):
        v.verify(token)  # the refusal is cached too
    assert len(c.server.reviews) == 2


def test_tokenreview_errors_are_never_cached(c: Cluster) -> None:
    v = c.verifier(method="tokenreview")
    token = c.token()
    v.verify(c.token())  # discovery done
    c.server.fail_next(1, status=500)
    with pytest.raises(VerifierUnavailableError, match="HTTP 500"):
        v.verify(token)
    assert v.verify(token).method == "tokenreview"


def test_an_api_server_that_ignores_audiences_passes_no_token(c: Cluster) -> None:
    c.server.ignore_review_audiences = True
    v = c.verifier(method="tokenreview")
    with pytest.raises(TokenRefusedError, match="without confirming the audiences"):
        v.verify(c.token())


def test_32_threads_with_one_new_token_make_one_review(c: Cluster) -> None:
    v = c.verifier(method="tokenreview", issuer=c.issuer.issuer)
    c.server.review_delay = 0.2
    token = c.token()
    barrier = threading.Barrier(32)
    results: list[object] = []

    def call() -> None:
        barrier.wait()
        results.append(v.verify(token))

    threads = [threading.Thread(target=call) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 32 and len({id(r) for r in results}) == 1
    assert len(c.server.reviews) == 1


def test_averify_never_blocks_the_event_loop(c: Cluster) -> None:
    v = c.verifier(method="tokenreview", issuer=c.issuer.issuer)
    c.server.review_delay = 0.3

    async def main() -> int:
        ticks = 0
        task = asyncio.ensure_future(v.averify(c.token()))
        while not task.done():
            ticks += 1
            await asyncio.sleep(0.01)
        await task
        return ticks

    assert asyncio.run(main()) >= 10


# ----------------------------------------------------------------------- no leaks --------
def test_no_token_in_messages_reprs_or_traceback_locals(c: Cluster) -> None:
    v = c.verifier()
    token = c.token(audiences=["someone-else"])
    with pytest.raises(VerificationError) as info:
        v.verify(token)
    shown = [str(info.value), repr(info.value), repr(v)]
    tb = info.value.__traceback__
    frames = 0
    while tb is not None:  # the library's frames (the test's own frame holds `token`, of course)
        if "sa_token" in tb.tb_frame.f_code.co_filename:
            frames += 1
            shown += [repr(value) for value in tb.tb_frame.f_locals.values()]
        tb = tb.tb_next
    assert frames >= 1
    assert_no_token("\n".join(shown), [token], what="the error, its traceback's locals, the verifier")
    good = c.token()
    assert_no_token(repr(v.verify(good)) + str(v.verify(good)), [good], what="the identity")


def test_a_forked_child_starts_with_empty_caches_and_a_new_hash_key(c: Cluster) -> None:
    v = c.verifier()
    token = c.token()
    v.verify(token)
    parent_digest = v._verdicts.digest(token)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            report = {"cached": len(v._verdicts), "same_key": v._verdicts.digest(token) == parent_digest}
            report["user"] = v.verify(token).username
            os.write(w, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        report = json.loads(f.read() or "{}")
    os.waitpid(pid, 0)
    assert report == {"cached": 0, "same_key": False, "user": "system:serviceaccount:default:default"}
    assert c.server.count(JWKS) == 2  # the child fetched its own keys


def test_metrics_count_verifications_fetches_reviews_and_hits(c: Cluster) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from sa_token.metrics import register

    registry = CollectorRegistry()
    register(registry)
    v = c.verifier()
    token = c.token()
    v.verify(token)
    v.verify(token)
    with pytest.raises(WrongAudienceError):
        v.verify(c.token(audiences=["x"]))
    r = c.verifier(method="tokenreview")
    r.verify(token)
    text = generate_latest(registry).decode()
    assert 'sa_token_verifications_total{method="jwks",result="ok"}' in text
    assert 'sa_token_verifications_total{method="jwks",result="audience-mismatch"}' in text
    assert 'sa_token_jwks_fetches_total{result="success"}' in text
    assert 'sa_token_token_reviews_total{result="authenticated"}' in text
    assert 'sa_token_verify_cache_hits_total{method="jwks"}' in text


def test_the_verifiers_own_token_refused_is_unavailable_after_one_reread(c: Cluster, tmp_path: Path) -> None:
    from sa_token import TokenSource
    from sa_token.testing import Kubelet, ProjectedVolume

    volume = ProjectedVolume(tmp_path / "wrong")
    Kubelet(volume, c.issuer, audiences=["not-the-api-server"]).rotate()  # the API server refuses it
    with TokenSource(volume.token_path) as source:
        v = c.verifier(source=source)
        with pytest.raises(VerifierUnavailableError, match=r"HTTP 401.*verifier's own token") as info:
            v.verify(c.token())
    assert not info.value.caller_fault
    assert [r.status for r in c.server.requests] == [401, 401]  # the re-read token, tried once more


def test_a_cached_review_never_outlives_the_token(c: Cluster) -> None:
    clock = Clock()
    v = c.verifier(method="tokenreview", clock=clock)
    token = c.token(expiration_seconds=5, now=clock.now)
    v.verify(token)
    clock.now += 6  # expired (within the 60 s leeway): the cached answer is not used
    v.verify(token)
    assert len(c.server.reviews) == 2


def test_at_most_16_reviews_are_in_flight(c: Cluster) -> None:
    v = c.verifier(method="tokenreview", issuer=c.issuer.issuer)
    c.server.review_delay = 0.3
    tokens = [c.token() for _ in range(40)]
    threads = [threading.Thread(target=v.verify, args=(t,)) for t in tokens]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(c.server.reviews) == 40
    assert 8 <= c.server.max_reviews_in_flight <= 16  # in parallel, never more than 16 (TLS set-up blurs the top)
    assert time.monotonic() - t0 >= 0.85  # 40 reviews of 0.3 s, at most 16 at a time: three waves


def test_without_pyjwt_jwks_fails_at_construction_with_the_install_hint() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['jwt'] = None\n"
        "from sa_token.verify import TokenVerifier\n"
        "TokenVerifier(audience='a', method='tokenreview', api_server='https://127.0.0.1:1')\n"
        "try:\n"
        "    TokenVerifier(audience='a', api_server='https://127.0.0.1:1')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "pip install 'sa-token[verify]'" in out.stdout, out.stderr

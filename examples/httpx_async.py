"""An asyncio client that calls a service concurrently with the pod's token, via httpx.

``sa_token.httpx.TokenAuth`` never blocks the event loop: the token is a cached string, and a
file read, when one is needed, runs in a worker thread. The server is verified against the
ServiceAccount's CA bundle (``ca.crt`` next to the token), not the system CAs, which do not
know the cluster's CA: ``AsyncCAReloadingTransport`` also follows the kubelet's rotations of
that file.

    python httpx_async.py [--url https://kubernetes.default.svc/version] [--token-path PATH] \
        [--audience AUD] [--ca PATH | --ca system] [--count 3 --concurrency 5 --interval 1]

Prints one line per round: the statuses, and the token jti(s) the server saw when it reports
them (a test server's ``/echo`` does; the API server's ``/version`` does not). A request that
fails is explained once on stderr (a TLS failure says what to check). Exits 1 if any request
failed, 2 if the token or the CA file cannot be used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import ssl
import sys
from collections.abc import Sequence
from typing import Optional

import httpx

from sa_token import CABundle, CAFileError, TokenError, TokenSource
from sa_token.httpx import AsyncCAReloadingTransport, TokenAuth

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def explain(exc: BaseException, url: str, ca: str) -> str:
    """What went wrong with a request, and what to check (httpx's ConnectError alone says
    neither: the cause is in its exception chain)."""
    chain: list[BaseException] = []
    e: Optional[BaseException] = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    verify = next((c for c in chain if isinstance(c, ssl.SSLCertVerificationError)), None)
    if verify is not None:
        return (
            f"TLS: the certificate of {url} does not verify against {ca}: {verify.verify_message}. "
            "Check that --ca is the CA that signed the server's certificate (the API server's is "
            f"{SA_DIR}/ca.crt; another service needs its own CA, a public one --ca system) and that "
            "the URL's host is a name the certificate lists (kubernetes.default.svc, not a bare IP)"
        )
    tls = next((c for c in chain if isinstance(c, ssl.SSLError)), None)
    if tls is not None:
        return f"TLS handshake with {url} failed: {tls}; check that the URL is https:// on a TLS port"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect to {url}: {exc}; check the host and port (and any NetworkPolicy)"
    return f"{type(exc).__name__} calling {url}: {exc}"


async def run(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(TokenSource(args.token_path, audience=args.audience))
        if args.ca == "system":
            transport: httpx.AsyncBaseTransport = httpx.AsyncHTTPTransport()
            ca_name = "the system CAs"
        else:
            transport = AsyncCAReloadingTransport(stack.enter_context(CABundle(args.ca)))
            ca_name = args.ca
        async with httpx.AsyncClient(auth=TokenAuth(source), transport=transport, timeout=10) as client:
            failures, explained = 0, set()
            for round_no in range(1, args.count + 1):
                if round_no > 1:
                    await asyncio.sleep(args.interval)
                results = await asyncio.gather(
                    *(client.get(args.url) for _ in range(args.concurrency)), return_exceptions=True
                )
                statuses, jtis = [], set()
                for r in results:
                    if isinstance(r, BaseException):
                        failures += 1
                        statuses.append(type(r).__name__)
                        why = explain(r, args.url, ca_name)
                        if why not in explained:
                            explained.add(why)
                            print(why, file=sys.stderr)
                        continue
                    statuses.append(str(r.status_code))
                    if r.status_code != 200:
                        failures += 1
                    elif r.headers.get("content-type", "").startswith("application/json"):
                        body = r.json()
                        if isinstance(body, dict) and body.get("jti"):  # a server that reports it
                            jtis.add(str(body["jti"]))
                seen = f" jti={','.join(sorted(jtis))}" if jtis else ""
                print(f"round {round_no}: {' '.join(statuses)}{seen}", flush=True)
    return 1 if failures else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=os.environ.get("API_URL", "https://kubernetes.default.svc/version"))
    p.add_argument("--token-path", default=os.environ.get("TOKEN_PATH", f"{SA_DIR}/token"))
    p.add_argument("--audience", default=os.environ.get("TOKEN_AUDIENCE"))
    p.add_argument(
        "--ca",
        default=os.environ.get("CA_FILE", f"{SA_DIR}/ca.crt"),
        help="the CA bundle that verifies the server (default: the ServiceAccount's ca.crt); "
        "'system' for the system CAs",
    )
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=5)
    p.add_argument("--interval", type=float, default=1.0)
    args = p.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except CAFileError as exc:  # before TokenError: it is one (a TokenFileError)
        print(f"cannot use the CA bundle: {exc}; pass --ca PATH (or --ca system)", file=sys.stderr)
        return 2
    except TokenError as exc:
        print(f"cannot use the token: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

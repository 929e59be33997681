"""An asyncio client that calls a service concurrently with the pod's token, via httpx.

``sa_token.httpx.TokenAuth`` never blocks the event loop: the token is a cached string, and a
file read, when one is needed, runs in a worker thread.

    python httpx_async.py --url https://api.example.svc/echo --token-path /var/run/secrets/tokens/token \
        --audience api --count 3 --concurrency 5 [--ca ca.crt]

Prints one line per round: the statuses and the token jti(s) the server saw. Exits 1 if any
request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Optional

import httpx

from sa_token import TokenError, TokenSource
from sa_token.httpx import TokenAuth


async def run(args: argparse.Namespace) -> int:
    with TokenSource(args.token_path, audience=args.audience) as source:
        verify = args.ca or True
        async with httpx.AsyncClient(auth=TokenAuth(source), verify=verify, timeout=10) as client:
            failures = 0
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
                        continue
                    statuses.append(str(r.status_code))
                    if r.status_code != 200:
                        failures += 1
                    elif r.headers.get("content-type", "").startswith("application/json"):
                        jtis.add(str(r.json().get("jti")))
                print(f"round {round_no}: {' '.join(statuses)} jti={','.join(sorted(jtis))}", flush=True)
    return 1 if failures else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=os.environ.get("API_URL", "https://kubernetes.default.svc/version"))
    p.add_argument(
        "--token-path",
        default=os.environ.get("TOKEN_PATH", "/var/run/secrets/kubernetes.io/serviceaccount/token"),
    )
    p.add_argument("--audience", default=os.environ.get("TOKEN_AUDIENCE"))
    p.add_argument("--ca", default=os.environ.get("CA_FILE"))
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=5)
    p.add_argument("--interval", type=float, default=1.0)
    args = p.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except TokenError as exc:
        print(f"cannot use the token: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Call a service with the pod's projected token for the audience ``vault``, via requests.

Goes with ``vault-pod.yaml``. The token file is rotated by the kubelet; ``TokenSource`` follows
it and ``TokenAuth`` puts the current token in each request's ``Authorization`` header (and
retries once with a fresh token after a 401).

Settings (arguments override environment variables):

    --token-path / TOKEN_PATH   default /var/run/secrets/tokens/vault-token
    --url        / VAULT_URL    the endpoint to call (default https://vault.vault.svc:8200/v1/sys/health)
    --ca         / VAULT_CACERT CA bundle to verify the server with (default: the system's)
    --count N                   calls to make, 0 = forever (default 0)
    --interval S                seconds between calls (default 10)

Prints one line per call (status and, when the server echoes it, the token's jti, never the
token) and exits 1 if any call failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Optional, Union

import requests

from sa_token import TokenError, TokenSource
from sa_token.requests import TokenAuth


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--token-path", default=os.environ.get("TOKEN_PATH", "/var/run/secrets/tokens/vault-token")
    )
    p.add_argument("--url", default=os.environ.get("VAULT_URL", "https://vault.vault.svc:8200/v1/sys/health"))
    p.add_argument("--ca", default=os.environ.get("VAULT_CACERT"))
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--interval", type=float, default=10.0)
    args = p.parse_args(argv)

    try:
        # Fails here, with a clear message, if the file is missing or the audience is wrong.
        source = TokenSource(args.token_path, audience="vault")
    except TokenError as exc:
        print(f"cannot use the token: {exc}", file=sys.stderr)
        return 2

    session = requests.Session()
    session.auth = TokenAuth(source)
    # Per call: requests lets REQUESTS_CA_BUNDLE override session.verify.
    verify: Union[str, bool] = args.ca or True
    failures = 0
    n = 0
    with source:
        while args.count == 0 or n < args.count:
            if n:
                time.sleep(args.interval)
            n += 1
            try:
                resp = session.get(args.url, verify=verify, timeout=10)
            except (requests.RequestException, TokenError) as exc:
                failures += 1
                print(f"call {n}: {type(exc).__name__}: {exc}", flush=True)
                continue
            jti = _jti(resp)
            print(f"call {n}: {resp.status_code}" + (f" jti={jti}" if jti else ""), flush=True)
            if not resp.ok:
                failures += 1
    return 1 if failures else 0


def _jti(resp: requests.Response) -> Optional[str]:
    try:
        body = resp.json()
    except ValueError:
        return None
    return body.get("jti") if isinstance(body, dict) else None


if __name__ == "__main__":
    sys.exit(main())

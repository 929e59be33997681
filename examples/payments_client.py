"""Pod A of the verify pair (examples/verify-pair.yaml): calls pod B with its projected token
for B's audience (re-read as the kubelet rotates it) and prints who B says it is.

    python payments_client.py --url http://payments.demo.svc:8080/pay \
        --token-path /var/run/secrets/tokens/payments
"""

from __future__ import annotations

import argparse
import sys
import time
from urllib.parse import urlsplit

import requests

from sa_token import TokenError, TokenSource
from sa_token.requests import TokenAuth


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--token-path", default="/var/run/secrets/tokens/payments")
    p.add_argument("--audience", default="payments")
    p.add_argument("--count", type=int, default=1, help="calls to make (0: forever)")
    p.add_argument("--interval", type=float, default=30.0)
    args = p.parse_args()
    host = urlsplit(args.url).netloc
    try:
        source = TokenSource(args.token_path, audience=args.audience)
    except TokenError as exc:
        print(f"payments_client: {exc}", file=sys.stderr)
        return 2
    session = requests.Session()
    session.auth = TokenAuth(source, hosts=[host])  # the token goes to B only
    n = 0
    while args.count == 0 or n < args.count:
        r = session.get(args.url, timeout=10)
        print(r.status_code, r.text, flush=True)
        if r.status_code != 200:
            return 1
        n += 1
        if args.count == 0 or n < args.count:
            time.sleep(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())

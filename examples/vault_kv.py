"""Read a KV secret from Vault (or OpenBao) in a pod, logged in with the pod's projected token.

Goes with ``vault-pod.yaml``. The kubelet rotates the token file; ``TokenSource`` follows it;
``VaultAuth`` exchanges it for a Vault token at Vault's Kubernetes (or JWT) auth method, renews
that token in the background and logs in again, with the current projected token, when it must.
The app only calls ``vault.client()``, an ``hvac.Client`` that always carries a valid token.

Settings (arguments override environment variables):

    --token-path / TOKEN_PATH         default /var/run/secrets/tokens/vault-token
    --vault-addr / VAULT_ADDR         default https://vault.vault.svc:8200
    --role       / VAULT_ROLE         default payments
    --method     / VAULT_AUTH_METHOD  kubernetes (default) or jwt
    --ca         / VAULT_CACERT       CA bundle for Vault's certificate (default: the system's)
    --secret     / VAULT_SECRET       the KV version 2 secret under secret/ (default db)
    --count N                         reads to make, 0 = forever (default 0)
    --interval S                      seconds between reads (default 10)

Prints one line per read with the secret's keys (never its values) and the Vault token's
accessor; exits 1 if any read failed, 2 if the first login failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Optional, Union

import hvac.exceptions
import requests

from sa_token import TokenError, TokenSource
from sa_token.vault import VaultAuth, VaultLoginError


def main(argv: Optional[Sequence[str]] = None) -> int:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--token-path", default=env("TOKEN_PATH", "/var/run/secrets/tokens/vault-token"))
    p.add_argument("--vault-addr", default=env("VAULT_ADDR", "https://vault.vault.svc:8200"))
    p.add_argument("--role", default=env("VAULT_ROLE", "payments"))
    p.add_argument("--method", default=env("VAULT_AUTH_METHOD", "kubernetes"), choices=["kubernetes", "jwt"])
    p.add_argument("--ca", default=env("VAULT_CACERT"))
    p.add_argument("--secret", default=env("VAULT_SECRET", "db"))
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--interval", type=float, default=10.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")  # sa-token's warnings

    verify: Union[str, bool] = args.ca or True
    try:
        # Both fail here, with a clear message, on a wrong path, audience, role or address.
        source = TokenSource(args.token_path, audience="vault")
        vault = VaultAuth(source, url=args.vault_addr, role=args.role, method=args.method, verify=verify)
    except (TokenError, VaultLoginError) as exc:
        print(f"cannot log in to Vault: {exc}", file=sys.stderr)
        return 2

    failures = 0
    n = 0
    with source, vault:
        kv = vault.client().secrets.kv.v2
        while args.count == 0 or n < args.count:
            if n:
                time.sleep(args.interval)
            n += 1
            try:
                secret = kv.read_secret_version(path=args.secret, raise_on_deleted_version=True)
            except (hvac.exceptions.VaultError, requests.RequestException, VaultLoginError) as exc:
                failures += 1
                print(f"read {n}: {type(exc).__name__}: {exc}", flush=True)
                continue
            keys = ",".join(sorted(secret["data"]["data"]))
            print(f"read {n}: {args.secret} keys={keys} accessor={vault.lease.accessor}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Get a Microsoft Entra ID access token for the pod's projected token (AKS Workload Identity).

In a pod labelled ``azure.workload.identity/use: "true"`` the azure-workload-identity webhook
sets (see docs/integrations/azure.md):

    AZURE_FEDERATED_TOKEN_FILE   the projected token (audience api://AzureADTokenExchange)
    AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_AUTHORITY_HOST

Options: --scope (default https://storage.azure.com/.default), --count N (0 = forever;
default 0), --interval S (default 60). azure-identity caches the access token and asks for a
new one before it expires, each time with the token the kubelet wrote last. Prints no secret.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Optional

from sa_token import TokenError
from sa_token.azure import WorkloadIdentityCredential


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scope", default="https://storage.azure.com/.default")
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--interval", type=float, default=60.0)
    args = p.parse_args(argv)
    try:
        credential = WorkloadIdentityCredential()  # pass it to any Azure SDK client
    except TokenError as exc:  # a missing variable, a token for another audience
        print(f"cannot use the projected token: {exc}", file=sys.stderr)
        return 2
    n = 0
    with credential:
        while args.count == 0 or n < args.count:
            if n:
                time.sleep(args.interval)
            n += 1
            try:
                token = credential.get_token(args.scope)
            except TokenError as exc:  # an expired token, or Entra's refusal (EntraIDError, AADSTS code)
                print(f"call {n}: {exc}", file=sys.stderr)
                return 1
            left = token.expires_on - time.time()
            print(f"call {n}: access token for {args.scope}, valid for {left / 60:.0f} more minutes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

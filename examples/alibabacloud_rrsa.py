"""Get Alibaba Cloud STS credentials for the pod's projected token (ACK RRSA).

In a pod the ack-pod-identity-webhook sets (see docs/integrations/alibabacloud.md):

    ALIBABA_CLOUD_OIDC_TOKEN_FILE     the projected token (audience sts.aliyuncs.com)
    ALIBABA_CLOUD_ROLE_ARN            the RAM role to assume
    ALIBABA_CLOUD_OIDC_PROVIDER_ARN   the cluster's OIDC provider in RAM
    ALIBABA_CLOUD_STS_ENDPOINT / ALIBABA_CLOUD_STS_REGION   optional: which STS to ask

Options: --count N (0 = forever; default 0), --interval S (default 60), --duration-seconds
(default 3600). The SDK's ``Client`` refreshes the credentials 15 minutes before they
expire, each time with the token the kubelet wrote last. Prints no secret.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Optional

from alibabacloud_credentials.client import Client

from sa_token import TokenError
from sa_token.alibabacloud import RRSACredentialsProvider


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--interval", type=float, default=60.0)
    p.add_argument("--duration-seconds", type=int, default=3600)
    args = p.parse_args(argv)
    try:
        provider = RRSACredentialsProvider(duration_seconds=args.duration_seconds)
    except TokenError as exc:  # a missing variable, a token for another audience
        print(f"cannot use the projected token: {exc}", file=sys.stderr)
        return 2
    client = Client(provider=provider)  # hand `client` to any Alibaba Cloud SDK client's config
    n = 0
    while args.count == 0 or n < args.count:
        if n:
            time.sleep(args.interval)
        n += 1
        try:
            cred = client.get_credential()
        except TokenError as exc:  # an expired token, or STS's refusal (STSError, with its Code)
            print(f"call {n}: {exc}", file=sys.stderr)
            return 1
        left = (provider.credential_expires_at() or 0) - time.time()
        print(f"call {n}: {cred.type} credentials, valid for {left / 60:.0f} more minutes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

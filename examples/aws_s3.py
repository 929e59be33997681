"""List S3 buckets with AWS credentials exchanged for the pod's projected token (EKS IRSA).

In a pod the EKS Pod Identity webhook sets everything from the ServiceAccount's
``eks.amazonaws.com/role-arn`` annotation (see docs/integrations/aws.md):

    AWS_WEB_IDENTITY_TOKEN_FILE   the projected token (audience sts.amazonaws.com)
    AWS_ROLE_ARN                  the role to assume
    AWS_REGION                    the region

Options: --count N (calls, 0 = forever; default 0), --interval S (default 60),
--duration-seconds (the credentials' lifetime; default the role's). botocore refreshes the
credentials before they expire, each time with the token the kubelet wrote last.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Optional

from botocore.exceptions import BotoCoreError, ClientError

from sa_token import TokenError
from sa_token.aws import boto3_session


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--interval", type=float, default=60.0)
    p.add_argument("--duration-seconds", type=int, default=None)
    args = p.parse_args(argv)
    try:
        # Fails here, naming the variable or the audience, if the pod is not set up for IRSA.
        s3 = boto3_session(duration_seconds=args.duration_seconds).client("s3")
    except TokenError as exc:
        print(f"cannot use the projected token: {exc}", file=sys.stderr)
        return 2
    n = 0
    while args.count == 0 or n < args.count:
        if n:
            time.sleep(args.interval)
        n += 1
        try:
            names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
        except TokenError as exc:  # the typed errors: expired token, STS refusal (STSError)
            print(f"call {n}: {exc}", file=sys.stderr)
            return 1
        except (BotoCoreError, ClientError) as exc:  # STS or S3 unreachable, S3 refused
            print(f"call {n}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        print(f"call {n}: {len(names)} bucket(s): {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Get a Google Cloud access token for the pod's projected token (workload identity federation).

The pod mounts a projected token whose audience is the workload identity pool provider's and
the credential configuration made by ``gcloud iam workload-identity-pools create-cred-config``
(see docs/integrations/google.md):

    GOOGLE_APPLICATION_CREDENTIALS   the credential configuration (JSON)

Options: --count N (0 = forever; default 0), --interval S (default 60). google-auth refreshes
the access token before it expires, each time with the token the kubelet wrote last. Prints
no secret.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Optional

from google.auth.transport.requests import Request

from sa_token import TokenError
from sa_token.google import SubjectTokenSupplier


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--interval", type=float, default=60.0)
    args = p.parse_args(argv)
    try:
        credentials = SubjectTokenSupplier().credentials()  # pass it to any Google Cloud client
    except TokenError as exc:  # no configuration, a token for another audience
        print(f"cannot use the projected token: {exc}", file=sys.stderr)
        return 2
    n = 0
    while args.count == 0 or n < args.count:
        if n:
            time.sleep(args.interval)
        n += 1
        try:
            if not credentials.valid:  # what every Google client does before a request
                credentials.refresh(Request())
        except TokenError as exc:  # an expired token, or the STS's refusal (STSError)
            print(f"call {n}: {exc}", file=sys.stderr)
            return 1
        left = (credentials.credential_expires_at() or 0) - time.time()
        print(f"call {n}: access token valid for {left / 60:.0f} more minutes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

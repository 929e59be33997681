"""List the pods of this pod's namespace with the official ``kubernetes`` client.

``sa_token.kubernetes.load_incluster_config()`` replaces ``kubernetes.config.load_incluster_config()``:
the token is re-read when the kubelet rotates it (and after a 401), and ``ca.crt`` is followed
through CA rotations.

    python list_pods.py [--namespace NS] [--count N --interval S]

In a pod nothing needs configuring: ``KUBERNETES_SERVICE_HOST``/``_PORT`` come from the kubelet,
the token, CA and namespace from ``/var/run/secrets/kubernetes.io/serviceaccount``. ``TOKEN_PATH``
and ``CA_PATH`` (or ``--token-path``/``--ca-path``) override the file paths. The
ServiceAccount needs ``list`` on ``pods`` (a Role and RoleBinding).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Optional

from kubernetes import client

from sa_token import TokenError
from sa_token.kubernetes import NotInClusterError, load_incluster_config, read_namespace

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--token-path", default=os.environ.get("TOKEN_PATH", f"{SA_DIR}/token"))
    p.add_argument("--ca-path", default=os.environ.get("CA_PATH", f"{SA_DIR}/ca.crt"))
    p.add_argument("--namespace", help="default: the pod's own namespace")
    p.add_argument("--count", type=int, default=1, help="how many times to list (0 = forever)")
    p.add_argument("--interval", type=float, default=30.0)
    args = p.parse_args(argv)

    try:
        load_incluster_config(token_path=args.token_path, ca_path=args.ca_path)
        namespace = args.namespace or read_namespace(
            os.path.join(os.path.dirname(args.token_path), "namespace")
        )
    except NotInClusterError as exc:
        print(f"not in a cluster: {exc}", file=sys.stderr)
        return 2
    except TokenError as exc:
        print(f"cannot use the ServiceAccount token: {exc}", file=sys.stderr)
        return 2

    core = client.CoreV1Api()  # uses the default ApiClient that load_incluster_config installed
    n = 0
    while args.count == 0 or n < args.count:
        if n:
            time.sleep(args.interval)
        n += 1
        pods = core.list_namespaced_pod(namespace)
        names = ", ".join(pod.metadata.name or "?" for pod in pods.items if pod.metadata)
        print(f"list {n}: {len(pods.items)} pods in {namespace}: {names}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

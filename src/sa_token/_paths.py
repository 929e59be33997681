"""Where a pod's token files are, and how a projected volume lays them out: no I/O beyond
``lstat``, nothing imported beyond ``os`` (the CLI's probe uses it)."""

from __future__ import annotations

import os

__all__ = ["DATA_DIR", "DEFAULT_TOKEN_PATH", "volume_root"]

# Where the kubelet mounts the default kube-api-access volume (DefaultAPITokenMountPath).
DEFAULT_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"
# The link the kubelet's atomic writer swaps to publish a new generation of a projected volume.
DATA_DIR = "..data"


def volume_root(path: str) -> str | None:
    """The projected volume's root: the nearest ancestor directory of ``path`` that holds
    ``..data``; ``None`` for a file outside any projected volume (a ``subPath`` mount, a copy)."""
    d = os.path.dirname(os.path.abspath(path))
    while True:
        if os.path.lexists(os.path.join(d, DATA_DIR)):
            return d
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent

"""Test kit: reproduce what the kubelet and the API server do, on one machine.

* [`TokenIssuer`][sa_token.testing.TokenIssuer] mints RS256 tokens with the real bound-token claim set and
  exposes its public key and JWKS, so a test server can verify them like the API server does.
* [`ProjectedVolume`][sa_token.testing.ProjectedVolume] writes files into a directory exactly as the kubelet's
  ``AtomicWriter`` does (timestamped directory, ``..data_tmp`` renamed over ``..data``, top-level symlinks,
  file modes), with a one-call [`ProjectedVolume.rotate()`][sa_token.testing.ProjectedVolume.rotate].
* [`Kubelet`][sa_token.testing.Kubelet] combines both: it rotates a volume's token on demand or on a schedule.
* `KubeletProcess` does the same from another process, as on a node, and reports when each
  ``..data`` swap happened (for tests and benchmarks of a busy process).
* `assert_no_token` (and `find_token`, `token_parts`) checks that text holds no piece of a
  token; `open_fds`, `inotify_instances` and `inotify_watches` count what a process holds, for
  leak tests.
* `sts.FakeSTS` fakes the cloud token services (AWS STS, Alibaba Cloud STS, Entra ID, Google
  STS) that exchange a projected token, verifying it as they do.
* The pytest plugin (installed with the package) provides the fixtures ``token_issuer``,
  ``projected_volume``, ``kubelet`` and ``fake_sts``.

Needs the ``testing`` extra (``pip install 'sa-token[testing]'``) for signing.
"""

from __future__ import annotations

from ._issuer import TokenIssuer
from ._kubelet import Kubelet
from ._kubelet_process import KubeletProcess, Publication
from ._leaks import assert_no_token, find_token, inotify_instances, inotify_watches, open_fds, token_parts
from ._volume import ProjectedVolume

__all__ = [
    "Kubelet",
    "KubeletProcess",
    "ProjectedVolume",
    "Publication",
    "TokenIssuer",
    "assert_no_token",
    "find_token",
    "inotify_instances",
    "inotify_watches",
    "open_fds",
    "token_parts",
]

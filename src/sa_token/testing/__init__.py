"""Test kit: reproduce what the kubelet and the API server do, on one machine.

* :class:`TokenIssuer` mints RS256 tokens with the real bound-token claim set and exposes its
  public key and JWKS, so a test server can verify them like the API server does.
* :class:`ProjectedVolume` writes files into a directory exactly as the kubelet's
  ``AtomicWriter`` does (timestamped directory, ``..data_tmp`` renamed over ``..data``,
  top-level symlinks, file modes), with a one-call :meth:`ProjectedVolume.rotate`.
* :class:`Kubelet` combines both: it rotates a volume's token on demand or on a schedule.
* ``sa_token.testing.sts.FakeSTS`` fakes the cloud token services (AWS STS, Alibaba Cloud
  STS, Entra ID, Google STS) that exchange a projected token, verifying it as they do.
* The pytest plugin (installed with the package) provides the fixtures ``token_issuer``,
  ``projected_volume``, ``kubelet`` and ``fake_sts``.

Needs the ``testing`` extra (``pip install 'sa-token[testing]'``) for signing.
"""

from __future__ import annotations

from ._issuer import TokenIssuer
from ._kubelet import Kubelet
from ._volume import ProjectedVolume

__all__ = ["Kubelet", "ProjectedVolume", "TokenIssuer"]

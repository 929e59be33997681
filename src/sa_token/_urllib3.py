"""The CA bundle's `SSLContext` as urllib3 can use it (for requests and the kubernetes client).

urllib3 1.26, what botocore allows on Python 3.9, sends no SNI to an IP address (such as the API
server's service IP) and so cannot use a context that checks host names itself: the handshake
fails with "check_hostname requires server_hostname". It checks the host name after the
handshake instead (IP addresses included) when the context does not. urllib3 2 takes the
bundle's own context as it is.
"""

from __future__ import annotations

import ssl

import urllib3

from ._ca import CABundle

_TAKES_BUNDLE_CONTEXT = int(str(getattr(urllib3, "__version__", "2")).split(".")[0]) >= 2


def pool_context(ca: CABundle) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """`(the bundle's context, the context to give urllib3's pools)`: the same object with
    urllib3 2; with urllib3 1.26 one made from the bundle's PEM that leaves host names to urllib3.
    The first is the one to compare with, to see whether the bundle changed."""
    ctx = ca.ssl_context()
    if _TAKES_BUNDLE_CONTEXT:
        return ctx, ctx
    legacy = ssl.create_default_context(cadata=ca.pem.decode("ascii"))
    legacy.check_hostname = False  # urllib3 1.26 matches the host name after the handshake
    return ctx, legacy

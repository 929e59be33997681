"""Pod B of the verify pair (examples/verify-pair.yaml): a WSGI service that accepts only
callers with a projected token for its audience, and says who they are.

    python payments_server.py --audience payments --port 8080 [--method tokenreview]

In a pod, the verifier finds the API server and its own token itself; outside one, pass
``--api-server``, ``--ca`` and ``--bearer-file``. GET /healthz is not checked.
"""

from __future__ import annotations

import argparse
import json
import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server

from sa_token import TokenSource
from sa_token.verify import Identity, TokenVerifier
from sa_token.verify.wsgi import TokenAuthMiddleware


def app(environ: dict, start_response):  # type: ignore[no-untyped-def,type-arg]
    if environ["PATH_INFO"] == "/healthz":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    identity: Identity = environ["sa_token.identity"]
    body = json.dumps({"caller": identity.username, "pod": identity.pod, "method": identity.method}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--audience", default="payments")
    p.add_argument("--method", choices=("jwks", "tokenreview"), default="jwks")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-server")
    p.add_argument("--ca")
    p.add_argument("--bearer-file")
    args = p.parse_args()
    source = TokenSource(args.bearer_file) if args.bearer_file else None
    verifier = TokenVerifier(audience=args.audience, method=args.method, api_server=args.api_server,
                             ca=args.ca, source=source)
    with make_server("127.0.0.1" if args.api_server else "0.0.0.0", args.port,
                     TokenAuthMiddleware(app, verifier), handler_class=QuietHandler) as httpd:
        print(f"listening on port {httpd.server_port}", flush=True)
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
    verifier.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

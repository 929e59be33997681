"""A WSGI app whose TokenSource is created at import, before gunicorn forks its workers.

    TOKEN_PATH=/var/run/secrets/tokens/vault-token TOKEN_AUDIENCE=vault \
        gunicorn --preload -w 2 -b 0.0.0.0:8000 gunicorn_app:app

With ``--preload`` the module (and the source, its inotify watch and its threads) is loaded
once in the gunicorn master, then the workers are forked. Threads do not survive ``fork()``;
sa-token restarts its watcher in each worker and re-reads the file, so every worker keeps
following the kubelet's rotations.

``GET /`` answers with the worker's pid and the current token's ``jti`` (never the token), so a
test can check that each worker sees each new token.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any, Callable

from sa_token import TokenSource

SOURCE = TokenSource(
    os.environ.get("TOKEN_PATH", "/var/run/secrets/kubernetes.io/serviceaccount/token"),
    audience=os.environ.get("TOKEN_AUDIENCE") or None,
)


def app(_environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    # In a real app: requests.get(url, auth=sa_token.requests.TokenAuth(SOURCE)).
    token = SOURCE.current()
    body = json.dumps({"pid": os.getpid(), "jti": token.claims.get("jti")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]

"""``sa-token verify [TOKEN_FILE|-] --audience A [--method jwks|tokenreview]``: would a receiver
accept this token? The receiving side's check (`sa_token.verify.TokenVerifier`), from a shell.

Prints the caller's identity, or the reason the token is refused; never the token. Exit 0
verified, 1 refused (expired, wrong audience or issuer, bad signature, unknown key, refused by
TokenReview), 2 when it cannot be decided: the file cannot be read or is not a JWT, the API
server or the keys cannot be reached, a setting is missing.
"""

from __future__ import annotations

import argparse
import sys

from sa_token import _fmt
from sa_token.errors import ConfigurationError, TokenError

from ._common import describe, token_path
from ._output import EXIT_FILE, EXIT_INVALID, EXIT_OK, Output, fail

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional

    from sa_token.verify import Identity

__all__ = ["DESCRIPTION", "HELP", "NAME", "add_arguments", "run"]

NAME = "verify"
HELP = "check a token as a receiver would: JWKS or TokenReview; prints who sent it"
DESCRIPTION = (
    "Verify a token the way a service receiving it would (sa_token.verify): signature with the "
    "issuer's keys (--method jwks) or the API server's TokenReview, issuer, audience and expiry. "
    "Prints the identity, or why it is refused. Exit 0 verified, 1 refused, 2 undecidable "
    "(unreadable file, not a JWT, API server or keys unreachable, missing setting)."
)
# A token file larger than this is not a token (a bound token is 1-2 KiB).
MAX_INPUT = 64 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sa_token._paths import DEFAULT_TOKEN_PATH

    parser.add_argument(
        "path", nargs="?", default=DEFAULT_TOKEN_PATH, metavar="TOKEN_FILE",
        help=f"the token to verify: a file, or - for standard input (default {DEFAULT_TOKEN_PATH})",
    )
    parser.add_argument("--audience", action="append", required=True,
                        help="an audience the token must carry (repeat for several: any one suffices)")
    parser.add_argument("--method", choices=("jwks", "tokenreview"), default="jwks",
                        help="jwks: check the signature here (default); tokenreview: ask the API server")
    parser.add_argument("--api-server", help="the API server URL (default: KUBERNETES_SERVICE_HOST/PORT)")
    parser.add_argument("--issuer", help="the issuer tokens must have (default: discovered)")
    parser.add_argument("--jwks-url", help="where the keys are (default {api-server}/openid/v1/jwks)")
    parser.add_argument("--ca", help="the API server's CA bundle (default the pod's ca.crt)")
    parser.add_argument("--bearer-file", help="the verifier's own token (default: the pod's)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")


def _read(arg: str) -> str:
    if arg == "-":
        data = sys.stdin.read(MAX_INPUT + 1)
        where = "standard input"
    else:
        path = token_path(arg)
        where = _fmt.path(path)
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                data = f.read(MAX_INPUT + 1)
        except OSError as exc:
            problem = f"cannot read the token at {where}: {exc.strerror}"
            raise TokenError(problem, reason="unreadable") from None
    if len(data) > MAX_INPUT:
        raise TokenError(f"{where} holds over {MAX_INPUT} characters: not a token", reason="too-large")
    return data.strip()


def _verifier(args: argparse.Namespace) -> Any:
    from sa_token import TokenSource
    from sa_token.verify import TokenVerifier

    source = None if args.bearer_file is None else TokenSource(args.bearer_file)
    return TokenVerifier(
        audience=args.audience, method=args.method, api_server=args.api_server, issuer=args.issuer,
        jwks_url=args.jwks_url, ca=args.ca, source=source,
    )


def _facts(identity: Identity) -> dict[str, Any]:
    return {
        "username": identity.username, "namespace": identity.namespace,
        "service_account": identity.service_account, "service_account_uid": identity.service_account_uid,
        "pod": identity.pod, "pod_uid": identity.pod_uid, "node": identity.node,
        "audiences": list(identity.audiences), "issuer": identity.issuer, "jti": identity.jti,
        "issued_at": _fmt.iso(identity.issued_at), "expires_at": _fmt.iso(identity.expires_at),
        "method": identity.method,
    }


def run(args: argparse.Namespace) -> int:
    from sa_token.verify import VerificationError

    out = Output()
    verifier: Optional[Any] = None
    try:
        verifier = _verifier(args)
        identity = verifier.verify(_read(args.path))
    except VerificationError as exc:
        code = EXIT_INVALID if exc.caller_fault and exc.reason != "malformed" else EXIT_FILE
        return _refused(out, args, exc.reason, str(exc), code)
    except (TokenError, ConfigurationError) as exc:
        return _refused(out, args, exc.reason, describe(exc, None), EXIT_FILE)
    except ImportError as exc:  # --method jwks without pyjwt: the install hint, no traceback
        return _refused(out, args, "missing-dependency", str(exc), EXIT_FILE)
    finally:
        if verifier is not None:
            verifier.close()
    if args.json:
        out.json({"ok": True, "state": "verified", **_facts(identity)})
    else:
        out.line(f"verified: {identity} by {identity.method}; audience {', '.join(identity.audiences)}; "
                 f"expires {_fmt.iso(identity.expires_at)}")
    return EXIT_OK


def _refused(out: Output, args: argparse.Namespace, reason: str, message: str, code: int) -> int:
    line = f"{reason}: {message}"
    if args.json:
        out.json({"ok": False, "state": reason, "line": line})
    fail(line)
    return code

"""Decoding the parts of a compact JWS (RFC 7515): base64url segments and their JSON objects,
for the core's token files (`sa_token._token`) and the verifier's incoming tokens
(`sa_token.verify`), each raising its own error. Standard library alone, and cheap to import:
it is on `sa-token check`'s path (an exec probe)."""

from __future__ import annotations

import binascii

TYPE_CHECKING = False  # not typing's: this module is on `sa-token check`'s path (an exec probe)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Optional

__all__ = ["b64url", "json_object"]

# The base64url alphabet (RFC 7515 section 2: no padding, no other characters), and its two
# letters that differ from standard base64's. Byte tables, not a regular expression: compiling
# one costs `sa-token check` (an exec probe) about 0.5% of its start-up.
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


def b64url(segment: str) -> Optional[bytes]:
    """The bytes of one base64url segment of a compact JWS (RFC 7515 section 2: the url-safe
    alphabet, no padding), or None when it is not one. Returns, never raises: the caller
    raises its own error, outside any ``except`` (no chained frame keeps the segment)."""
    if len(segment) % 4 == 1 or not segment.isascii():
        return None
    raw = segment.encode("ascii")
    if raw.translate(None, _ALPHABET):  # what is left is outside the alphabet
        return None
    try:  # binascii, not base64: the module costs an exec probe a few percent
        return binascii.a2b_base64(raw.translate(_TO_STANDARD) + b"=" * (-len(raw) % 4))
    except binascii.Error:
        return None


def json_object(raw: Optional[bytes]) -> Optional[dict[str, Any]]:
    """``raw`` (UTF-8, RFC 7519 section 7.2) decoded as a JSON object, or None (not UTF-8, not
    JSON, not an object, nothing given)."""
    if raw is None:
        return None
    try:
        value = _json_value(raw.decode("utf-8"))
    # RecursionError: deeply nested arrays; ValueError: bad JSON, bad UTF-8, huge integers.
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


class _LoadsDefaults:
    """What json's C scanner reads of a ``JSONDecoder``: the settings of a plain ``json.loads``."""

    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int = float, int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}.__getitem__


def _json_loader() -> Callable[[str], object]:
    """``json.loads``, run with json's own C scanner (the one ``json.loads`` runs) where the
    interpreter has it: importing the ``json`` package compiles seven regular expressions, a
    quarter of the CPU an exec probe (`sa-token check`) spends in sa-token. Elsewhere (PyPy),
    ``json.loads`` itself. `tests/test_token.py` holds the two to the same answers."""
    try:
        from _json import make_scanner
    except ImportError:  # not CPython
        import json

        return json.loads
    scan = make_scanner(_LoadsDefaults())  # type: ignore[arg-type]  # it reads those attributes only

    def loads(text: str) -> object:
        body = text.strip(" \t\n\r")  # the whitespace json.loads skips around the value
        try:
            value, end = scan(body, 0)
        except StopIteration:  # no value at all
            value, end = None, -1
        if end != len(body):
            raise ValueError("not one JSON value")
        return value

    return loads


_json_value = _json_loader()

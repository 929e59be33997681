"""Token parsing and its error messages (the validator's own cases are in test_source.py)."""

from __future__ import annotations

import base64
import json
import pickle
from datetime import timezone
from typing import Optional

import pytest

from sa_token import MalformedTokenError, Token, TokenExpiredError, TokenFileError
from sa_token._token import parse_token
from sa_token.testing import TokenIssuer


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


SIG = base64.urlsafe_b64encode(b"s" * 256).rstrip(b"=").decode()  # an RS256-sized signature


def forge(claims: object, header: object = None) -> str:
    return f"{_b64(header or {'alg': 'RS256'})}.{_b64(claims)}.{SIG}"


def test_parse_exposes_claims_as_aware_datetimes(token_issuer: TokenIssuer) -> None:
    tok = parse_token(token_issuer.issue(audiences=["a", "b"], expiration_seconds=600, now=1_700_000_000))
    assert tok.audiences == ("a", "b")
    assert tok.issued_at is not None and tok.issued_at.tzinfo is timezone.utc
    assert tok.issued_at.timestamp() == 1_700_000_000
    assert tok.expires_at is not None and tok.expires_at.timestamp() == 1_700_000_600
    assert tok.not_before == tok.issued_at
    assert tok.rotation_due_at is not None and tok.rotation_due_at.timestamp() == 1_700_000_480
    assert tok.remaining(now=1_700_000_100) is not None
    assert tok.remaining(now=1_700_000_100).total_seconds() == 500  # type: ignore[union-attr]
    assert tok.subject == "system:serviceaccount:default:default"
    assert tok.issuer == token_issuer.issuer and tok.header["kid"] == token_issuer.kid


def test_rotation_point_is_capped_at_24h() -> None:
    tok = parse_token(forge({"iat": 0, "exp": 10 * 86400}))
    assert tok.rotation_due_at is not None and tok.rotation_due_at.timestamp() == 86400


def test_token_is_immutable() -> None:
    tok = parse_token(forge({"exp": 1}))
    with pytest.raises(AttributeError):
        tok.value = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        tok.claims["exp"] = 2  # type: ignore[index]


def test_single_string_audience_is_a_tuple() -> None:
    assert parse_token(forge({"aud": "vault"})).audiences == ("vault",)
    assert parse_token(forge({})).audiences == ()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("abc", "expected three dot-separated parts"),
        ("a.b.c.d", "expected three dot-separated parts"),
        ("!!!.@@@.###", "not a valid JWT"),
        (f"{_b64({'alg': 'RS256'})}.bm90IGpzb24.c2ln", "not a valid JWT"),
        (forge([1, 2]), "not a valid JWT"),
        (forge({"exp": "tomorrow"}), "'exp' must be a number"),
        (forge({"exp": True}), "'exp' must be a number"),
        (forge({"aud": 5}), "'aud' must be a string or a list"),
        (forge({"aud": ["a", 5]}), "'aud' must be a string or a list"),
        (forge({"iss": 1}), "'iss' must be a string"),
        (forge({"kubernetes.io": "x"}), "'kubernetes.io' must be an object"),
        (forge({"kubernetes.io": {"warnafter": "x"}}), "warnafter"),
        (forge({"exp": 10**400}), "'exp' must be a number of seconds, got a number out of range"),
        (
            forge({"exp": 1}).rsplit(".", 1)[0] + "." + base64.urlsafe_b64encode(b"s" * 250).decode().rstrip("="),
            "RS256 signature is 250 bytes, not 128 or 256 or 384 or 512: the file is truncated",
        ),
        (forge({"exp": 1}, {"alg": "ES256"}), "ES256 signature is 256 bytes, not 64"),
    ],
)
def test_malformed_tokens_give_a_clear_error_without_the_token(value: str, fragment: str) -> None:
    with pytest.raises(MalformedTokenError) as ei:
        parse_token(value, path="/p/token")
    msg = str(ei.value)
    assert fragment in msg and msg.startswith("/p/token: ")
    for part in value.split("."):
        if len(part) >= 4:
            assert part not in msg
    assert ei.value.__cause__ is None  # no deep traceback from the JWT library
    assert ei.value.__context__ is None or ei.value.__suppress_context__


def test_errors_pickle_and_keep_their_fields() -> None:
    e = TokenFileError("msg", path="/p", errno=2)
    e2 = pickle.loads(pickle.dumps(e))
    assert (str(e2), e2.path, e2.errno, isinstance(e2, OSError)) == ("msg", "/p", 2, True)
    x = TokenExpiredError("gone", path="/p")
    assert str(pickle.loads(pickle.dumps(x))) == "gone"


def test_token_value_is_not_in_repr() -> None:
    t = Token(value="secret.secret.secret", claims={"sub": "s"})
    assert "secret" not in repr(t) and "secret" not in str(t)


# ------------------------------------------------- the JSON decoder (json's own C scanner) ---
def _loads_or_error(loads: object, text: str) -> object:
    try:
        return ("ok", loads(text))  # type: ignore[operator]
    except (ValueError, RecursionError) as exc:
        return ("error", type(exc).__name__ == "RecursionError")


def _same(a: object, b: object) -> bool:
    """Equal, NaN included (json.dumps of the results: NaN != NaN)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_the_json_decoder_answers_as_json_loads() -> None:
    """`_jose` decodes with json's C scanner (no `json` import on the exec probe's path): for
    JSON documents of every kind, with whitespace around them, and for arbitrary text, it
    returns what ``json.loads`` returns or fails where it fails. Broken on purpose (trailing
    data accepted: no ``end`` check), the text cases fail."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from sa_token._jose import _json_value

    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
    values = st.recursive(scalars, lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=20)
    space = st.text(alphabet=" \t\n\r\x0b\x0c\u00a0", max_size=3)

    @settings(max_examples=400, deadline=None)
    @given(values, space, space)
    def documents(value: object, before: str, after: str) -> None:
        text = before + json.dumps(value) + after
        ours, theirs = _loads_or_error(_json_value, text), _loads_or_error(json.loads, text)
        assert _same(ours, theirs), text

    @settings(max_examples=400, deadline=None)
    @given(st.text(alphabet='{}[]",:0123456789.eE+-tfrnulsaNIy \t\n\\/u\x00', max_size=24))
    def texts(text: str) -> None:
        ours, theirs = _loads_or_error(_json_value, text), _loads_or_error(json.loads, text)
        assert _same(ours, theirs), repr(text)

    documents()
    texts()
    for text in ("", " ", "{} {}", '{"a": 1} x', "[" * 100_000, "1" * 5000):
        assert _same(_loads_or_error(_json_value, text), _loads_or_error(json.loads, text)), text[:20]


def _b64url_reference(segment: str) -> Optional[bytes]:
    """RFC 7515 section 2 base64url with the standard library's parts: the url-safe alphabet
    only, no padding, a length that is not 1 mod 4, decoded by ``base64.urlsafe_b64decode``."""
    import re

    if len(segment) % 4 == 1 or not re.fullmatch(r"[A-Za-z0-9_-]*", segment):
        return None
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except ValueError:
        return None


def test_the_segment_decoder_answers_as_base64_does() -> None:
    """`_jose.b64url` checks the alphabet with byte tables, not a regular expression (one costs
    the exec probe its compilation): for every text, it decodes what the reference decodes and
    refuses what it refuses (padding, '+', '/', spaces, non-ASCII look-alikes). Broken on
    purpose (no alphabet check), the texts with '+', '/' or spaces fail."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from sa_token._jose import b64url

    @settings(max_examples=600, deadline=None)
    @given(st.text(alphabet="AZaz09-_+/= \n.\u00e9\u0660\uff21", max_size=24))
    def texts(text: str) -> None:
        assert b64url(text) == _b64url_reference(text), repr(text)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=64))
    def round_trips(raw: bytes) -> None:
        assert b64url(base64.urlsafe_b64encode(raw).decode().rstrip("=")) == raw

    texts()
    round_trips()
    for text in ("", "A", "AA", "AA==", "A+A/", "QUJD", "QUJD\n", "\u0660\u0661\u0662\u0663"):
        assert b64url(text) == _b64url_reference(text), repr(text)


def test_without_the_c_scanner_json_loads_decodes() -> None:
    """Where the interpreter has no ``_json`` (PyPy), the decoder is ``json.loads`` itself."""
    import sys

    from sa_token._jose import _json_loader

    saved = sys.modules.get("_json")
    sys.modules["_json"] = None  # type: ignore[assignment]
    try:
        loads = _json_loader()
    finally:
        if saved is not None:
            sys.modules["_json"] = saved
        else:
            del sys.modules["_json"]
    assert loads is json.loads

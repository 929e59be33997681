"""Property tests of the parser, the file reader and TokenSource construction (issue 6).

On arbitrary bytes and on mutated real tokens: only the documented errors come out
(``TokenFileError``, ``MalformedTokenError``, ``TokenValidationError`` subclasses), never
another exception and never a hang (hypothesis deadlines); the size cap holds; and no error
message contains the token or any of its segments.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from _reliability import segments_of
from sa_token import MalformedTokenError, TokenError, TokenFileError, TokenSource, TokenValidationError
from sa_token._read import MAX_TOKEN_BYTES, read_token_file
from sa_token._token import Token, parse_token
from sa_token.testing import TokenIssuer

DOCUMENTED = (TokenFileError, MalformedTokenError, TokenValidationError)
# Per-example deadline: a parse is microseconds, a read a few dozen; a hang would blow it.
DEADLINE_MS = 500
# Segments shorter than this occur by chance in any text ("a", "1"...); real ones are 40+.
MIN_SECRET = 8

FUZZ = settings(
    max_examples=250,
    deadline=DEADLINE_MS,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples every run: CI stays reproducible
)


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer()


@pytest.fixture(scope="module")
def real_tokens(issuer: TokenIssuer) -> list[str]:
    return [
        issuer.issue(audiences=["vault"]),
        issuer.issue(audiences=["a", "b"], expiration_seconds=3607, extend=True),
        issuer.issue(audiences=["x"], pod=None, node=None),
    ]


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="sa-token-fuzz-"))
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


def _our_words() -> str:
    """Every string literal in sa-token's source: the text our messages are made of. Hypothesis
    draws strings from the constants of the code under test, so a generated "token" can be a
    piece of a message template ("token fi"): found in the message, but not quoted from it."""
    import ast

    import sa_token

    words = []
    for path in Path(sa_token.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                words.append(node.value)
    return "\n".join(words)


OUR_WORDS = _our_words()


def _check_message(err: BaseException, secret: str, path: str | None = None) -> None:
    """The error names ``path`` (when given) and quotes no part of ``secret``."""
    if path is not None:
        assert isinstance(err, TokenError)
        assert err.path == path
        assert path in str(err)
    text = str(err) + repr(err)
    for part in segments_of(secret.strip()):
        if len(part) >= MIN_SECRET and part not in OUR_WORDS:
            assert part not in text, "an error message quotes the token"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# --------------------------------------------------------------------------- strategies ---
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
CLAIM_NAMES = st.sampled_from(["exp", "iat", "nbf", "aud", "iss", "sub", "jti", "kubernetes.io"])


@st.composite
def mutated(draw: st.DrawFn, tokens: list[str]) -> str:
    """A real token with one of: a byte-level edit, a cut, a segment swapped or dropped, or a
    claim replaced by arbitrary JSON (re-encoded, so the damage reaches the claim checks)."""
    tok = draw(st.sampled_from(tokens))
    kind = draw(st.sampled_from(["edit", "cut", "segments", "claim", "header"]))
    if kind == "edit":
        i = draw(st.integers(0, len(tok) - 1))
        ch = draw(st.characters(min_codepoint=32, max_codepoint=126))
        return tok[:i] + ch + tok[i + 1 :]
    if kind == "cut":
        i = draw(st.integers(0, len(tok)))
        j = draw(st.integers(i, len(tok)))
        return tok[:i] + tok[j:]
    h, p, s = tok.split(".")
    if kind == "segments":
        parts = draw(st.lists(st.sampled_from([h, p, s, "", "e30"]), min_size=1, max_size=5))
        return ".".join(parts)
    if kind == "header":
        header = draw(st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=3) | JSON_VALUES)
        return f"{_b64(json.dumps(header).encode())}.{p}.{s}"
    claims = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    if draw(st.booleans()):
        claims[draw(CLAIM_NAMES)] = draw(JSON_VALUES)
    else:
        claims["kubernetes.io"] = {draw(st.sampled_from(["warnafter", "pod", "namespace"])): draw(JSON_VALUES)}
    return f"{h}.{_b64(json.dumps(claims).encode())}.{s}"


# --------------------------------------------------------------------------- parser ---
@FUZZ
@given(st.text(max_size=300))
def test_parse_token_arbitrary_text(value: str) -> None:
    try:
        tok = parse_token(value, path="/fuzz/token")
    except MalformedTokenError as exc:
        _check_message(exc, value, "/fuzz/token")
    else:
        assert isinstance(tok, Token)
        assert tok.value == value
        assert value not in repr(tok) or len(value) < MIN_SECRET


@FUZZ
@given(data=st.data())
def test_parse_token_mutated_real_tokens(real_tokens: list[str], data: st.DataObject) -> None:
    value = data.draw(mutated(real_tokens))
    try:
        tok = parse_token(value, path="/fuzz/token")
    except MalformedTokenError as exc:
        _check_message(exc, value)
        return
    # What parses has claims of the documented types, and its derived times compute.
    for name in ("exp", "iat", "nbf"):
        v = tok.claims.get(name)
        assert v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
    assert isinstance(tok.audiences, tuple)
    assert all(isinstance(a, str) for a in tok.audiences)
    _ = (tok.expires_at, tok.issued_at, tok.not_before, tok.rotation_due_at, tok.lifetime, tok.warn_after)
    _ = (tok.namespace, tok.service_account, tok.pod, tok.node, tok.issuer, tok.subject)
    for part in segments_of(value):
        if len(part) >= MIN_SECRET:
            assert part not in repr(tok) and part not in str(tok)


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("digits", [310, 4000])
def test_parse_token_huge_integers(real_tokens: list[str], claim: str, digits: int) -> None:
    h, p, s = real_tokens[0].split(".")
    claims = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    claims[claim] = 10**digits
    value = f"{h}.{_b64(json.dumps(claims).encode())}.{s}"
    try:
        parse_token(value, path="/fuzz/token")
    except MalformedTokenError as exc:
        _check_message(exc, value)


# --------------------------------------------------------------------------- files ---
def _write(workdir: Path, content: bytes) -> str:
    path = workdir / "token"
    tmp = workdir / "token.tmp"
    tmp.write_bytes(content)
    os.replace(tmp, path)
    return str(path)


@FUZZ
@given(st.binary(max_size=2000))
def test_read_token_file_arbitrary_bytes(workdir: Path, content: bytes) -> None:
    path = _write(workdir, content)
    try:
        tok = read_token_file(path)
    except (TokenFileError, MalformedTokenError) as exc:
        _check_message(exc, content.decode("latin-1"), path)
    else:
        assert tok.value == content.strip().decode("ascii")


@FUZZ
@given(st.integers(min_value=MAX_TOKEN_BYTES - 2, max_value=MAX_TOKEN_BYTES + 3), st.sampled_from([b"A", b" "]))
def test_size_cap_holds(workdir: Path, size: int, fill: bytes) -> None:
    path = _write(workdir, fill * size)
    with pytest.raises((TokenFileError, MalformedTokenError)) as ei:
        read_token_file(path)
    if size > MAX_TOKEN_BYTES:
        assert isinstance(ei.value, TokenFileError)
        assert f"limit {MAX_TOKEN_BYTES}" in str(ei.value)
    else:
        assert "limit" not in str(ei.value)  # under the cap: refused for its content, not its size


@FUZZ
@given(data=st.data(), pad=st.sampled_from([b"", b"\n", b" \r\n\t"]))
def test_token_source_on_mutated_files(
    real_tokens: list[str], workdir: Path, data: st.DataObject, pad: bytes
) -> None:
    value = data.draw(mutated(real_tokens))
    path = _write(workdir, value.encode() + pad)
    audience = data.draw(st.sampled_from([None, "vault", ["a", "x"]]))
    try:
        src = TokenSource(path, audience=audience, watch=False)
    except DOCUMENTED as exc:
        _check_message(exc, value, path)
        return
    try:
        try:
            assert src.token() == value
        except TokenValidationError as exc:  # e.g. a mutated exp in the past
            _check_message(exc, value)
        for part in segments_of(value):
            if len(part) >= MIN_SECRET:
                assert part not in repr(src)
    finally:
        src.close()


@FUZZ
@given(st.binary(min_size=1, max_size=600))
def test_token_source_on_arbitrary_bytes(workdir: Path, content: bytes) -> None:
    assume(content.strip())
    path = _write(workdir, content)
    try:
        src = TokenSource(path, watch=False)
    except DOCUMENTED as exc:
        _check_message(exc, content.decode("latin-1"), path)
    else:
        src.close()

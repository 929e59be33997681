"""Helpers shared by the cloud integration tests (test_aws, test_alibabacloud, test_azure,
test_google): the no-leak checks and the metrics view."""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Optional

import jwt
import pytest

from sa_token._observe import ExchangedCredential, credentials
from sa_token.testing import Kubelet, ProjectedVolume, TokenIssuer

# The frames whose locals are checked: the cloud integrations and the core they call.
CLOUD_MODULES = (
    "sa_token._cloud",
    "sa_token._source",
    "sa_token._token",
    "sa_token._read",
    "sa_token.aws",
    "sa_token.alibabacloud",
    "sa_token.azure",
    "sa_token.google",
)


class RecordingKubelet(Kubelet):
    """A `Kubelet` that remembers every token it wrote, to scan any output for all of them."""

    @classmethod
    def fixture(cls, audience: str) -> Any:
        """A module's ``kubelet`` fixture: one of these, for ``audience``, with a first token."""

        @pytest.fixture
        def kubelet(projected_volume: ProjectedVolume, token_issuer: TokenIssuer) -> Iterator[RecordingKubelet]:
            k = cls(projected_volume, token_issuer, audiences=[audience], expiration_seconds=3600)
            k.rotate()
            yield k
            k.stop()

        return kubelet

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tokens: list[str] = []
        self.on_rotate = self.tokens.append


def jti(token: str) -> str:
    value: str = jwt.decode(token, options={"verify_signature": False})["jti"]
    return value


def assert_no_token(text: str, tokens: list[str]) -> None:
    """Neither a whole token nor its payload or signature segment is in ``text``."""
    for tok in tokens:
        for part in (tok, *tok.split(".")[1:]):
            assert part not in text, "a token (or part of one) was shown"


def _chain(exc: Optional[BaseException]) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def assert_clean_error(exc: BaseException, tokens: list[str]) -> None:
    """The error's text, its formatted traceback (whole chain) and the locals of every
    cloud-integration frame on it hold no token."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert_no_token(str(exc) + repr(exc) + text, tokens)
    for link in _chain(exc):
        tb: Optional[TracebackType] = link.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if str(frame.f_globals.get("__name__", "")).startswith(CLOUD_MODULES):
                for name, value in frame.f_locals.items():
                    shown = value if isinstance(value, str) else repr(value)
                    for tok in tokens:
                        assert tok not in shown, f"local {name!r} of {frame.f_code.co_name} holds a token"
            tb = tb.tb_next


def tracked(kind: str) -> list[ExchangedCredential]:
    """The live credentials of ``kind`` the metrics would report."""
    return [c for c in credentials() if c.credential_kind == kind]

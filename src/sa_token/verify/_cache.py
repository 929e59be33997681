"""What the verifier shares between threads: single-flight calls and the verdict cache.

* `Flights`: concurrent calls for one key share one run of the work; the others wait for its
  outcome (value or error). What makes 1000 first calls one JWKS fetch, or 32 threads with one
  new token one TokenReview. The lock guards only the table of calls in flight: the work runs
  outside it.
* `Verdicts`: answers (an `Identity` or an error) by a keyed hash of the token: BLAKE2b with a
  random per-process key, as kube-apiserver's token cache uses HMAC-SHA256, so the cache never
  holds a token and its keys cannot be chosen to collide. Bounded: the oldest entries go first.
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
from typing import Callable, Generic, Optional, TypeVar, Union

from .errors import VerificationError, VerifierUnavailableError

__all__ = ["Flights", "Verdicts"]

T = TypeVar("T")
Answer = Union[object, VerificationError]

# How long a call waits for the same work running in another thread: the longest that work can
# take (a request's timeout, 10 s, twice: discovery then keys) with a margin.
FOLLOW_TIMEOUT = 30.0
# Verdicts kept: kube-apiserver's token cache holds 32 x 128 entries (sized for "5k nodes and 10k
# namespaces ... a 2x safety margin"); each entry here is about 300 bytes.
MAX_VERDICTS = 32768


class _Call:
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: object = None
        self.error: Optional[BaseException] = None


class Flights:
    """One run of ``work`` per key at a time; concurrent callers get its outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[object, _Call] = {}

    def run(self, key: object, work: Callable[[], T]) -> T:
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if call is None:
                call = self._calls[key] = _Call()
        if not leader:
            return self._follow(call)  # type: ignore[return-value]
        try:
            call.value = value = work()
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            with self._lock:
                del self._calls[key]
            call.done.set()
        return value

    @staticmethod
    def _follow(call: _Call) -> object:
        if not call.done.wait(FOLLOW_TIMEOUT):
            raise VerifierUnavailableError(
                f"the same check in another thread took over {FOLLOW_TIMEOUT:.0f}s"
            )
        err = call.error
        if isinstance(err, VerificationError):
            raise copy.copy(err)  # a fresh instance (TokenError.__reduce__): no shared traceback
        if err is not None:
            raise VerifierUnavailableError(f"the same check in another thread failed ({type(err).__name__})")
        return call.value


class Verdicts(Generic[T]):
    """Answers by keyed hash of the token, each with the time it stops being the answer and a
    generation (the key set it was made with; 0 when that does not matter)."""

    def __init__(self, limit: int = MAX_VERDICTS) -> None:
        self._key = os.urandom(32)
        self._lock = threading.Lock()
        self._entries: dict[bytes, tuple[float, int, Union[T, VerificationError]]] = {}
        self.limit = limit

    def digest(self, value: str) -> bytes:
        return hashlib.blake2b(value.encode("utf-8", "surrogatepass"), key=self._key, digest_size=16).digest()

    def get(self, digest: bytes, now: float, generation: int = 0) -> Optional[Union[T, VerificationError]]:
        entry = self._entries.get(digest)  # a dict read is atomic: no lock on the hot path
        if entry is None or now >= entry[0] or entry[1] != generation:
            return None
        return entry[2]

    def put(
        self, digest: bytes, until: float, answer: Union[T, VerificationError], generation: int = 0
    ) -> None:
        with self._lock:
            entries = self._entries
            if len(entries) >= self.limit and digest not in entries:
                del entries[next(iter(entries))]  # dicts keep insertion order: the oldest
            entries[digest] = (until, generation, answer)

    def __len__(self) -> int:
        return len(self._entries)

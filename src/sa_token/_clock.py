"""The one clock convention: two clocks, each for one job.

* **`wall`**: seconds since the epoch, for *validity* (``exp``, ``nbf``, ``iat``, the rotation
  point, a lease's expiry). ``time.time`` is looked up at each call, so freezegun and
  ``monkeypatch.setattr(time, "time", ...)`` reach it. A ``clock=`` given to a `TokenSource`,
  `CABundle` or `LeaseKeeper` replaces it for that object (`now`).
* **`mono`**: the hub's clock for *sleeping* (deadlines, backoff): ``CLOCK_BOOTTIME`` where the
  OS has it, which keeps counting while a VM or laptop is suspended (a resumed machine finds
  its overdue deadlines due at once, not a suspension later), else ``CLOCK_MONOTONIC``. Not
  ``time.monotonic``, which freezegun replaces: a test that freezes time must not freeze the
  watcher thread's sleeps (deadlines are converted when they are scheduled).
"""

from __future__ import annotations

import functools
import time

TYPE_CHECKING = False  # not typing's: this module is on `sa-token check`'s path (an exec probe)
if TYPE_CHECKING:
    from typing import Callable, Optional

    Clock = Callable[[], float]  # a `time.time`-like function: seconds since the epoch

__all__ = ["Clock", "mono", "now", "wall"]



def wall() -> float:
    """Seconds since the epoch, ``time.time`` looked up now."""
    return time.time()


def now(clock: Optional[Clock]) -> float:
    """``clock()``, or `wall` time without one."""
    return time.time() if clock is None else clock()


def _mono_clock() -> Clock:
    for name in ("CLOCK_BOOTTIME", "CLOCK_MONOTONIC"):
        clock_id = getattr(time, name, None)
        if clock_id is not None:
            try:
                time.clock_gettime(clock_id)
            except OSError:  # pragma: no cover - an old kernel without CLOCK_BOOTTIME
                continue
            return functools.partial(time.clock_gettime, clock_id)
    return time.perf_counter  # pragma: no cover - no clock_gettime (not Linux)


mono: Clock = _mono_clock()

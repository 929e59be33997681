"""The "kubelet" of the rotation benchmark: a separate process, as in a real pod.

Reads one token per line on stdin, publishes it into the projected volume given as argv[1] with
``sa_token.testing.ProjectedVolume`` (the kubelet's AtomicWriter, step by step), and answers
``"<t0> <t1>\\n"``: ``time.perf_counter()`` immediately before and after the
``rename(..data_tmp, ..data)`` that publishes it. ``perf_counter`` is ``CLOCK_MONOTONIC`` on
Linux, one clock for every process, so the benchmark can subtract these stamps from its own.

A separate process, because the kubelet is one: a writer thread inside the benchmark would
compete for the benchmark's GIL while it removes the old generation, a cost no pod pays.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from sa_token.testing import ProjectedVolume

_rename = os.rename
_stamps: list[tuple[float, float]] = []


def _timed_rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
    if os.path.basename(os.fspath(dst)) == "..data":
        t0 = time.perf_counter()
        _rename(src, dst, *args, **kwargs)
        t1 = time.perf_counter()
        _stamps.append((t0, t1))
        return
    _rename(src, dst, *args, **kwargs)


def main() -> None:
    os.rename = _timed_rename  # ProjectedVolume.write calls os.rename at step 9
    volume = ProjectedVolume(sys.argv[1])
    first = True
    for line in sys.stdin:
        token = line.strip()
        if not token:
            break
        if first:  # the whole kube-api-access payload, as the kubelet's first write
            volume.write({"token": token, "namespace": "default", "ca.crt": "bench\n"})
            first = False
        else:
            volume.rotate(token)
        t0, t1 = _stamps[-1]
        sys.stdout.write(f"{t0!r} {t1!r}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

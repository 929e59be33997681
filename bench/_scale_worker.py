"""One scale scenario in a fresh process: ``_scale_worker.py SOURCES VOLUMES IDLE_SECONDS``.

A fresh process, so that "before" really has no sa-token thread, inotify instance or watch.
Creates ``SOURCES`` TokenSources spread round-robin over ``VOLUMES`` projected volumes (apps
create one source per client), then measures and prints one JSON object:

* ``inotify_instances``: ``anon_inode:inotify`` links in /proc/self/fd, before and after;
* ``threads_delta``: threads added (``/proc/self/task``, which counts every thread, Python's
  or not), with the new threads' names;
* ``mem_per_source_bytes``: tracemalloc's traced-memory growth over the creation, divided by
  SOURCES (it includes the one-time cost of the watcher, which shows at SOURCES=1);
* ``idle_wakeups_per_s``: context switches (voluntary + involuntary, ``/proc/self/task/*/status``)
  of every thread but the measuring one, while the process sits idle for IDLE_SECONDS with
  every source open: each is a thread waking up (or being preempted) with nothing to do;
* ``idle_cpu_fraction``: ``time.process_time()`` over wall time during that idle window;
* ``fanout_s``: after one rotation of the first volume, the time until every source on that
  volume returns the new token.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

from _common import AUDIENCE, context_switches

from sa_token import TokenSource
from sa_token.testing import ProjectedVolume, TokenIssuer, inotify_instances

# Bounded wait for the fan-out after a rotation; the expected time is about a millisecond.
FANOUT_TIMEOUT = 10.0


def _tasks() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def main() -> None:
    n_sources, n_volumes, idle = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    issuer = TokenIssuer()
    first, second = (issuer.issue(audiences=[AUDIENCE], expiration_seconds=3600) for _ in range(2))
    root = Path(tempfile.mkdtemp(prefix="sa-token-bench-scale-"))
    try:
        volumes = [ProjectedVolume(root / f"vol{i}") for i in range(n_volumes)]
        for vol in volumes:
            vol.write({"token": first, "namespace": "default"})
        paths = [str(vol.token_path) for vol in volumes]

        gc.collect()
        tasks_before = _tasks()
        names_before = {t.name for t in threading.enumerate()}
        inotify_before = inotify_instances()
        tracemalloc.start()
        mem_before = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        sources = [TokenSource(paths[i % n_volumes], audience=AUDIENCE) for i in range(n_sources)]
        create_s = time.perf_counter() - t0
        gc.collect()
        mem_after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        tasks_after = _tasks()
        new_threads = sorted(t.name for t in threading.enumerate() if t.name not in names_before)
        inotify_after = inotify_instances()
        assert all(s.token() == first for s in sources)

        gc.collect()
        me = threading.get_native_id()
        names = {t.native_id: t.name for t in threading.enumerate()}
        c0, w0, s0 = time.process_time(), time.perf_counter(), context_switches()
        time.sleep(idle)
        s1, wall = context_switches(), time.perf_counter() - w0
        idle_cpu = (time.process_time() - c0) / wall
        wakeups = {names.get(tid, str(tid)): n - s0[tid] for tid, n in s1.items() if tid in s0 and tid != me}

        on_first = [s for i, s in enumerate(sources) if i % n_volumes == 0]
        t0 = time.perf_counter()
        volumes[0].rotate(second)
        deadline = t0 + FANOUT_TIMEOUT
        while any(s.token() != second for s in on_first) and time.perf_counter() < deadline:
            time.sleep(0.0002)
        fanout = time.perf_counter() - t0 if all(s.token() == second for s in on_first) else None

        for s in sources:
            s.close()
        print(
            json.dumps(
                {
                    "sources": n_sources,
                    "volumes": n_volumes,
                    "inotify_instances_before": inotify_before,
                    "inotify_instances": inotify_after,
                    "threads_before": len(tasks_before),
                    "threads_after": len(tasks_after),
                    "threads_delta": len(tasks_after - tasks_before),
                    "new_threads": new_threads,
                    "mem_per_source_bytes": (mem_after - mem_before) / n_sources,
                    "create_per_source_s": create_s / n_sources,
                    "idle_seconds": wall,
                    "idle_wakeups": wakeups,
                    "idle_wakeups_per_s": sum(wakeups.values()) / wall,
                    "idle_cpu_fraction": idle_cpu,
                    "fanout_sources": len(on_first),
                    "fanout_s": fanout,
                }
            )
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

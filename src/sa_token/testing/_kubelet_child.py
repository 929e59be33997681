"""The kubelet process behind `KubeletProcess`: ``python -m sa_token.testing._kubelet_child``.

Reads its configuration (one JSON line) on stdin, then one command per line:

* ``{"publish": TOKEN}`` publishes that token; ``{"mint": true}`` mints one with the issuer key
  it was given, then publishes it. Each publication answers ``{"n", "before", "after"}``:
  ``time.perf_counter()`` immediately before and after ``rename(..data_tmp, ..data)``
  (``null`` when the payload was unchanged and nothing was swapped);
* ``{"start": EVERY, "tokens": [...] | null}`` publishes every EVERY seconds on its own thread
  (the given tokens in order, then nothing more; or fresh ones), answering each as above;
* ``{"stop": true}`` stops that thread and answers ``{"stopped": N}``.

End of input ends the process. Not an API: `KubeletProcess` is.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Optional

from sa_token.testing._issuer import TokenIssuer
from sa_token.testing._volume import DATA_DIR, ProjectedVolume

_stamps: list[tuple[float, float]] = []
_rename = os.rename


def _timed_rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
    """``os.rename``, stamped when it publishes ``..data`` (ProjectedVolume's step 9)."""
    if os.path.basename(os.fspath(dst)) != DATA_DIR:
        _rename(src, dst, *args, **kwargs)
        return
    before = time.perf_counter()
    _rename(src, dst, *args, **kwargs)
    _stamps.append((before, time.perf_counter()))


class _Child:
    def __init__(self, config: dict[str, Any]) -> None:
        self.volume = ProjectedVolume(
            config["directory"],
            default_mode=config["default_mode"],
            fs_user=config["fs_user"],
            fs_group=config["fs_group"],
            token_key=config["token_key"],
        )
        # The rest of the payload (namespace, ca.crt...) as the parent's volume last wrote it.
        self.files = {k: base64.b64decode(v) for k, v in config["files"].items()}
        key = config.get("key_pem")
        self.issuer = None if key is None else TokenIssuer(issuer=config["issuer"], key_pem=key.encode())
        self.mint_args = config["mint"]
        self.count = 0
        self.out_lock = threading.Lock()
        self.stop = threading.Event()
        self.worker: Optional[threading.Thread] = None

    def say(self, obj: dict[str, Any]) -> None:
        with self.out_lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    def publish(self, token: Optional[str]) -> None:
        if token is None:
            if self.issuer is None:
                raise RuntimeError("no issuer: KubeletProcess was created without one")
            token = self.issuer.issue(**self.mint_args)
        swaps = len(_stamps)
        self.volume.rotate(token, **self.files)
        self.count += 1
        before, after = _stamps[-1] if len(_stamps) > swaps else (None, None)
        self.say({"n": self.count, "before": before, "after": after})

    def start(self, every: float, tokens: Optional[list[str]]) -> None:
        self.stop.clear()
        source: Optional[Iterator[str]] = None if tokens is None else iter(tokens)

        def run() -> None:
            while not self.stop.wait(every):
                token = None if source is None else next(source, None)
                if source is not None and token is None:
                    return  # every given token published
                self.publish(token)

        self.worker = threading.Thread(target=run, name="kubelet", daemon=True)
        self.worker.start()

    def halt(self) -> None:
        self.stop.set()
        if self.worker is not None:
            self.worker.join()
            self.worker = None
        self.say({"stopped": self.count})


def main() -> None:
    os.rename = _timed_rename  # this process only publishes volumes: wrapping is safe here
    child = _Child(json.loads(sys.stdin.readline()))
    for line in sys.stdin:
        cmd = json.loads(line)
        if "publish" in cmd:
            child.publish(cmd["publish"])
        elif "mint" in cmd:
            child.publish(None)
        elif "start" in cmd:
            child.start(float(cmd["start"]), cmd.get("tokens"))
        elif "stop" in cmd:
            child.halt()
    child.stop.set()


if __name__ == "__main__":
    main()

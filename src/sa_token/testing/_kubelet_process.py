"""``KubeletProcess``: a kubelet in its own process, publishing into a `ProjectedVolume`."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Union

from ._issuer import DEFAULT_EXPIRATION_SECONDS, TokenIssuer
from ._volume import ProjectedVolume

__all__ = ["KubeletProcess", "Publication"]

# How long close() waits for the process to exit before killing it; it exits as soon as its
# input is closed, so this only matters when it hangs.
_EXIT_TIMEOUT = 10.0


class Publication(NamedTuple):
    """One token published by a `KubeletProcess`.

    ``before`` and ``after`` are ``time.perf_counter()`` in the kubelet process immediately
    before and after its ``rename(..data_tmp, ..data)`` (``None`` when the payload was unchanged
    and nothing was swapped). On Linux ``perf_counter`` is ``CLOCK_MONOTONIC``, one clock for
    every process: subtract them from your own ``perf_counter()`` readings.
    """

    number: int
    before: Optional[float]
    after: Optional[float]


class KubeletProcess:
    """A kubelet in another process: publishes tokens into a volume the way `Kubelet` does
    (`ProjectedVolume`'s atomic ``..data`` swap), but from its own interpreter, as on a node.

    Use it when the process under test is busy: a writer *thread* would compete with it for the
    GIL (and be starved by busy threads in turn), a cost and a delay no pod has.

    ```python
    with KubeletProcess(volume, issuer, audiences=["vault"]) as kubelet:
        kubelet.rotate()                 # mint and publish one token now (needs the issuer)
        pub = kubelet.publish(token)     # publish a given token; pub.before/.after: the swap
        kubelet.start(every=0.005)       # rotate on the process's own schedule...
        kubelet.stop()                   # ...until stopped; returns the number of rotations
    ```

    Args:
        volume: the volume to publish into. Its other files (``namespace``, ``ca.crt``...) are
            kept as the volume last wrote them; while the process runs, write the volume only
            through it.
        issuer: mints the tokens of `rotate` and `start` (its key is handed to the process);
            without it, only given tokens can be published.
        audiences: the minted tokens' ``aud``.
        expiration_seconds: the minted tokens' lifetime.
        namespace: the minted tokens' namespace.
        on_publish: called with each `Publication` of `start`'s schedule, on a reader thread.
    """

    def __init__(
        self,
        volume: ProjectedVolume,
        issuer: Optional[TokenIssuer] = None,
        *,
        audiences: Union[str, Iterable[str]] = ("https://kubernetes.default.svc.cluster.local",),
        expiration_seconds: float = DEFAULT_EXPIRATION_SECONDS,
        namespace: str = "default",
        on_publish: Optional[Callable[[Publication], None]] = None,
    ) -> None:
        self.volume = volume
        self.on_publish = on_publish
        self.rotations = 0
        """Tokens published so far."""
        self.last: Optional[Publication] = None
        """The latest publication."""
        self._mints = issuer is not None
        self._lock = threading.Lock()
        self._reader: Optional[threading.Thread] = None
        self._stopped: Optional[int] = None
        config = {
            "directory": str(volume.directory),
            "default_mode": volume.default_mode,
            "fs_user": volume.fs_user,
            "fs_group": volume.fs_group,
            "token_key": volume.token_key,
            "files": {
                k: base64.b64encode(v).decode() for k, v in volume._payload.items() if k != volume.token_key
            },
            "issuer": None if issuer is None else issuer.issuer,
            "key_pem": None if issuer is None else issuer.private_key_pem.decode(),
            "mint": {
                "audiences": [audiences] if isinstance(audiences, str) else list(audiences),
                "expiration_seconds": expiration_seconds,
                "namespace": namespace,
            },
        }
        if not config["files"]:  # a first write, as the kube-api-access volume has it
            config["files"] = {"namespace": base64.b64encode(namespace.encode()).decode()}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "sa_token.testing._kubelet_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=_child_env(),
        )
        self._send(config)

    def __repr__(self) -> str:
        return f"KubeletProcess(volume={self.volume!r}, rotations={self.rotations})"

    @property
    def token_path(self) -> Path:
        return self.volume.token_path

    def publish(self, token: str) -> Publication:
        """Publish ``token`` now; returns once it is published."""
        return self._request({"publish": token})

    def rotate(self) -> Publication:
        """Mint a fresh token in the kubelet process and publish it; returns once published."""
        self._need_issuer("rotate()")
        return self._request({"mint": True})

    def start(self, *, every: float, tokens: Optional[Iterable[str]] = None) -> None:
        """Publish every ``every`` seconds on the process's own schedule until `stop`: the given
        ``tokens`` in order (then nothing more), or freshly minted ones."""
        if tokens is None:
            self._need_issuer("start() without tokens")
        with self._lock:
            if self._reader is not None:
                raise RuntimeError("already started")
            self._stopped = None
            self._reader = threading.Thread(target=self._read_schedule, name="kubelet-process", daemon=True)
            self._reader.start()
            self._send({"start": every, "tokens": None if tokens is None else list(tokens)})

    def stop(self) -> int:
        """Stop `start`'s schedule; returns the number of tokens published in all."""
        with self._lock:
            reader, self._reader = self._reader, None
            if reader is None:
                return self.rotations
            self._send({"stop": True})
        reader.join()
        if self._stopped is None:
            raise RuntimeError("the kubelet process died")
        return self._stopped

    def close(self) -> None:
        """Stop the schedule and the process."""
        try:
            if self._reader is not None and self._proc.poll() is None:
                self.stop()
        finally:
            if self._proc.stdin is not None:
                try:
                    self._proc.stdin.close()
                except OSError:  # it died: its input pipe is broken
                    pass
            try:
                self._proc.wait(_EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()

    def __enter__(self) -> KubeletProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals ------
    def _need_issuer(self, what: str) -> None:
        if not self._mints:
            raise RuntimeError(f"{what} mints tokens: pass an issuer, KubeletProcess(volume, issuer)")

    def _send(self, obj: dict[str, Any]) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps(obj) + "\n")
            self._proc.stdin.flush()
        except OSError as exc:  # BrokenPipeError: it is gone
            raise RuntimeError(f"the kubelet process died (exit status {self._proc.poll()})") from exc

    def _receive(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the kubelet process died (exit status {self._proc.poll()})")
        msg: dict[str, Any] = json.loads(line)
        return msg

    def _record(self, msg: dict[str, Any]) -> Publication:
        pub = Publication(int(msg["n"]), msg["before"], msg["after"])
        self.rotations, self.last = pub.number, pub
        return pub

    def _request(self, cmd: dict[str, Any]) -> Publication:
        # Read in the calling thread, not through a reader thread: a thread waking at the swap
        # would compete with the process under test exactly when its pickup is measured.
        with self._lock:
            if self._reader is not None:
                raise RuntimeError("publishing on a schedule: stop() first")
            self._send(cmd)
            return self._record(self._receive())

    def _read_schedule(self) -> None:
        while True:
            try:
                msg = self._receive()
            except (RuntimeError, ValueError, OSError):
                return
            if "stopped" in msg:
                self._stopped = int(msg["stopped"])
                return
            pub = self._record(msg)
            if self.on_publish is not None:
                self.on_publish(pub)


def _child_env() -> dict[str, str]:
    """This environment, with this copy of sa_token first on the child's import path."""
    import sa_token

    root = str(Path(sa_token.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env

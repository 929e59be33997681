"""``Kubelet``: a simulated kubelet that mints and rotates a volume's token."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, Callable, Optional, Union

from ._issuer import TokenIssuer
from ._volume import ProjectedVolume

__all__ = ["Kubelet"]


class Kubelet:
    """Rotates the token of a [`ProjectedVolume`][sa_token.testing.ProjectedVolume] with tokens from a
    [`TokenIssuer`][sa_token.testing.TokenIssuer].

    ```python
    kubelet = Kubelet(volume, issuer, audiences=["vault"], expiration_seconds=600)
    kubelet.rotate()                  # one rotation now, returns the new token
    kubelet.start(every=0.5)          # or rotate in a background thread
    kubelet.stop()
    ```

    The first [`rotate()`][sa_token.testing.Kubelet.rotate] also writes ``namespace`` (and ``ca.crt`` when
    given), as the kube-api-access volume holds them.
    """

    def __init__(
        self,
        volume: ProjectedVolume,
        issuer: TokenIssuer,
        *,
        audiences: Union[str, Iterable[str]] = ("https://kubernetes.default.svc.cluster.local",),
        expiration_seconds: float = 3600,
        namespace: str = "default",
        ca_pem: Optional[bytes] = None,
        on_rotate: Optional[Callable[[str], None]] = None,
        **claims: Any,
    ) -> None:
        self.volume = volume
        self.issuer = issuer
        self.audiences = [audiences] if isinstance(audiences, str) else list(audiences)
        self.expiration_seconds = expiration_seconds
        self.namespace = namespace
        self.ca_pem = ca_pem
        self.on_rotate = on_rotate
        self.claims = claims
        self.rotations = 0
        self.current: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __repr__(self) -> str:
        return f"Kubelet(volume={self.volume!r}, rotations={self.rotations})"

    def mint(self, **overrides: Any) -> str:
        kwargs: dict[str, Any] = {
            "audiences": self.audiences,
            "expiration_seconds": self.expiration_seconds,
            "namespace": self.namespace,
            **self.claims,
        }
        kwargs.update(overrides)
        return self.issuer.issue(**kwargs)

    def rotate(self, **overrides: Any) -> str:
        """Mint a fresh token and publish it with an atomic ``..data`` swap; returns it."""
        token = self.mint(**overrides)
        files: dict[str, Union[bytes, str]] = {"namespace": self.namespace}
        if self.ca_pem is not None:
            files["ca.crt"] = self.ca_pem
        self.volume.rotate(token, **files)
        self.current = token
        self.rotations += 1
        if self.on_rotate is not None:
            self.on_rotate(token)
        return token

    def start(self, *, every: float) -> None:
        """Rotate every ``every`` seconds in a daemon thread until `stop()`."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(every):
                self.rotate()

        self._thread = threading.Thread(target=run, name="sa-token-kubelet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Kubelet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

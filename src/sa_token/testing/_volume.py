"""``ProjectedVolume``: write files exactly as the kubelet's AtomicWriter does.

Reproduces ``pkg/volume/util/atomic_writer.go`` ``Write`` step by step:

1. payload paths validated (relative, no ``..`` element, first element not starting with ``..``);
2. ``oldTsDir = readlink(<dir>/..data)``;
3. paths of the old generation that the new payload drops are computed;
4. unchanged payloads are not rewritten (but missing user-visible links are recreated);
5. ``..YYYY_MM_DD_HH_MM_SS.<random>`` created (mkdir 0700, then chmod 0755);
6. each file written with its mode (then chmod, umask-proof, then chown to ``fs_user``);
7. ownership set over the whole volume when ``fs_group`` is given (token 0600 -> 0640, dirs setgid);
8. ``symlink(<tsdir>, ..data_tmp)``;
9. ``rename(..data_tmp, ..data)``, the atomic publish;
10. user-visible symlinks ``<first element> -> ..data/<first element>`` created when missing;
11. top-level links no longer in the payload removed;
12. the old timestamped directory removed.

Then sources of this process on the volume's files that no inotify watch covers (a platform
without inotify, a process out of watches) are made to re-read, as inotify makes watched ones: a test
written with the kit sees the rotation at once everywhere.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Optional, Union

from sa_token._hub import HUB

__all__ = ["ProjectedVolume"]

DATA_DIR = "..data"
DATA_DIR_TMP = "..data_tmp"
# defaultMode of projected volumes (v1.ProjectedVolumeSourceDefaultMode, 0644).
DEFAULT_MODE = 0o644
# Token mode when the pod sets runAsUser for every container or fsGroup (projected.go collectData).
TOKEN_MODE_OWNED = 0o600
# With fsGroup, SetVolumeOwnership ORs the read-only mask into every file (volume_linux.go roMask).
FS_GROUP_RO_MASK = 0o440

Payload = Mapping[str, Union[bytes, str]]


class ProjectedVolume:
    """A directory written like a ``projected`` volume (``token``, ``ca.crt``, ``namespace``...).

    ```python
    vol = ProjectedVolume(tmp_path / "serviceaccount")
    vol.write({"token": jwt_string, "namespace": "default"})
    vol.rotate(new_jwt)          # only the token changes; the rest of the payload is kept
    ```

    ``fs_group`` reproduces ``securityContext.fsGroup`` (token ``0640``, group-owned, setgid
    directories), ``fs_user`` a common ``runAsUser`` (token ``0600`` owned by that uid); without
    either, files get ``default_mode`` (0644) as in a pod without a security context.
    """

    def __init__(
        self,
        directory: Union[str, os.PathLike[str]],
        *,
        default_mode: int = DEFAULT_MODE,
        fs_user: Optional[int] = None,
        fs_group: Optional[int] = None,
        token_key: str = "token",
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.default_mode = default_mode
        self.fs_user = fs_user
        self.fs_group = fs_group
        self.token_key = token_key
        self._payload: dict[str, bytes] = {}
        self.writes = 0

    def __repr__(self) -> str:
        return f"ProjectedVolume({str(self.directory)!r}, writes={self.writes})"

    @property
    def token_path(self) -> Path:
        """The user-visible token path, ``<dir>/token``."""
        return self.directory / self.token_key

    def path(self, key: str) -> Path:
        return self.directory / key

    @property
    def data_dir(self) -> Path:
        """The timestamped directory ``..data`` currently points at."""
        return self.directory / os.readlink(self.directory / DATA_DIR)

    def rotate(self, token: str, **files: Union[bytes, str]) -> None:
        """Write a new token, keeping the other files of the payload (or replacing those given
        as keywords, e.g. ``rotate(tok, **{"ca.crt": pem})``)."""
        payload: dict[str, Union[bytes, str]] = dict(self._payload)
        payload[self.token_key] = token
        payload.update(files)
        self.write(payload)

    def _mode_for(self, key: str) -> int:
        if key == self.token_key and (self.fs_user is not None or self.fs_group is not None):
            return TOKEN_MODE_OWNED
        return self.default_mode

    def write(self, payload: Payload) -> bool:
        """One ``AtomicWriter.Write``. Returns False when nothing changed (no swap happened)."""
        data = {self._validate(k): v.encode() if isinstance(v, str) else bytes(v) for k, v in payload.items()}
        vol = self.directory
        try:
            old_ts = os.readlink(vol / DATA_DIR)  # step 2
        except FileNotFoundError:
            old_ts = ""
        to_remove: set[str] = set()
        if old_ts:  # step 3: what the old generation has that the new payload drops
            old_dir = vol / old_ts
            for root, dirs, names in os.walk(old_dir):
                for name in dirs + names:
                    rel = os.path.relpath(os.path.join(root, name), old_dir)
                    to_remove.add(rel)
            for key in data:
                parts = key.split("/")
                for i in range(1, len(parts) + 1):
                    to_remove.discard("/".join(parts[:i]))
        should_write = not old_ts or bool(to_remove) or self._changed(vol / old_ts, data)  # step 4
        if should_write:
            ts_dir = self._new_ts_dir()  # step 5
            for key, content in data.items():  # step 6
                target = ts_dir / key
                target.parent.mkdir(parents=True, exist_ok=True)
                mode = self._mode_for(key)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
                try:
                    os.write(fd, content)
                finally:
                    os.close(fd)
                os.chmod(target, mode)
                if self.fs_user is not None:
                    os.chown(target, self.fs_user, -1)
            if self.fs_group is not None:  # step 7: SetVolumeOwnership over the whole volume
                self._set_ownership(vol)
            tmp = vol / DATA_DIR_TMP
            os.symlink(ts_dir.name, tmp)  # step 8
            os.rename(tmp, vol / DATA_DIR)  # step 9: the atomic publish
        for key in data:  # step 10
            first = key.split("/")[0]
            link = vol / first
            if not os.path.lexists(link):
                os.symlink(os.path.join(DATA_DIR, first), link)
        for rel in sorted(to_remove):  # step 11: top-level entries only
            if "/" not in rel:
                try:
                    os.remove(vol / rel)
                except OSError:
                    pass
        if should_write and old_ts:  # step 12
            shutil.rmtree(vol / old_ts, ignore_errors=True)
        self._payload = dict(data)
        if should_write:
            self.writes += 1
            # Sources in this process on files of this volume that no inotify watch covers
            # (a platform without inotify, a process out of watches) re-read now, as inotify would make them:
            # tests written with the kit pass the same everywhere.
            _refresh_unwatched(str(vol))
        return should_write

    @staticmethod
    def _validate(key: str) -> str:
        clean = os.path.normpath(key)
        parts = clean.split("/")
        if not key or os.path.isabs(key) or ".." in parts or parts[0].startswith("..") or len(key) > 4096:
            raise ValueError(f"invalid projected path {key!r}")
        if any(len(p) > 255 for p in parts):
            raise ValueError(f"path element too long in {key!r}")
        return clean

    @staticmethod
    def _changed(old_dir: Path, data: Mapping[str, bytes]) -> bool:
        for key, content in data.items():
            try:
                if (old_dir / key).read_bytes() != content:
                    return True
            except OSError:
                return True
        return False

    def _new_ts_dir(self) -> Path:
        prefix = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
        # os.MkdirTemp's random suffix: a decimal uint32; make it unique like MkdirTemp does.
        while True:
            candidate = self.directory / f"{prefix}{random.randint(0, 2**32 - 1)}"  # noqa: S311
            try:
                os.mkdir(candidate, 0o700)
                break
            except FileExistsError:
                continue
        os.chmod(candidate, 0o755)  # noqa: S103 - "needed to allow 'group' and 'other' to recurse"
        return candidate

    def _set_ownership(self, vol: Path) -> None:
        gid = self.fs_group
        assert gid is not None
        for root, dirs, names in os.walk(vol):
            entries = [os.path.join(root, n) for n in dirs + names] + ([root] if root == str(vol) else [])
            for p in entries:
                os.lchown(p, -1, gid)
                st = os.lstat(p)
                if stat.S_ISLNK(st.st_mode):
                    continue  # chmod would follow the link (kubernetes/kubernetes#37009)
                mode = stat.S_IMODE(st.st_mode) | FS_GROUP_RO_MASK
                if stat.S_ISDIR(st.st_mode):
                    mode |= stat.S_ISGID | 0o110
                os.chmod(p, mode)

    def remove(self) -> None:
        """Delete the whole volume directory (as at pod teardown)."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _refresh_unwatched(directory: str) -> None:
    """Re-read now every registered file under ``directory`` that its users want watched but no
    inotify watch covers: the kit's writes are seen at once on a platform (or in a process)
    without inotify, as inotify would make them seen."""
    from sa_token._hub import _refresh
    from sa_token._locks import inside

    prefix = os.path.abspath(directory) + os.sep
    if inside():
        return
    with HUB.lock:
        files = [f for f in HUB.files.values() if f.path.startswith(prefix) and f.watch_refs]
        files = [f for f in files if not f.watching]
    for f in files:
        _refresh(f)

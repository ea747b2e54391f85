"""Private state: files only their owner may read (keys, settings, records), directories only root may enter.

encomd runs with umask 077 (`PRIVATE_UMASK`) so whatever it and its children create is owner-only from the first
byte; these helpers also give explicit modes, so they hold whatever the caller's umask.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
GROUP_OTHER_BITS = 0o077


def write_private(path: Path, data: str | bytes, *, fsync: bool = False) -> None:
    """Replace `path` atomically with `data`, mode 0600 from the first byte (`fsync`: durable before the rename)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a tmp file left behind keeps its old mode through O_CREAT
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    tmp.replace(path)


def private_dir(path: Path) -> Path:
    """`path` (and missing parents) as directories created 0700; an existing `path` loses group and other bits."""
    if not path.is_dir():
        for parent in reversed(path.parents):
            if not parent.exists():
                parent.mkdir(mode=0o700, exist_ok=True)
        path.mkdir(mode=0o700, exist_ok=True)
    restrict(path)
    return path


def restrict(path: Path) -> None:
    """Take group and other permissions off `path` (not following a symlink; gone already is fine)."""
    try:
        mode = stat.S_IMODE(os.lstat(path).st_mode)
    except FileNotFoundError:
        return
    if mode & GROUP_OTHER_BITS and not path.is_symlink():
        os.chmod(path, mode & ~GROUP_OTHER_BITS)


def tighten_state_dir(data_dir: Path) -> None:
    """State left by older versions (0644 files in 0755 directories): the data dir and everything directly in it
    become owner-only, so nothing below is reachable by another uid. Deeper files are private from creation."""
    restrict(data_dir)
    for child in data_dir.iterdir():
        restrict(child)

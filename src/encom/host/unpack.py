"""Unpacking a slug as the app's uid, chrooted into the job's empty /app: never as root in the host's namespace.

A small child process (Debian-independent: the interpreter encomd runs on, without site-packages) is handed the
tarball as its stdin. It imports everything it needs, chroots into the destination, drops to the app's uid and gid
(no supplementary groups) and only then reads the archive with `encom.build.untar` (no link ever followed, no
setuid bit or device kept). Whatever the archive holds, the child can write nothing but the app's own directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC_ROOT = Path(__file__).resolve().parents[2]  # what holds the `encom` package
UNPACK_TIMEOUT = 300.0
# The child: the path to import encom from, then the destination, uid, gid and byte limit.
CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); from encom.host.unpack_child import child_main; "
    "child_main(sys.argv[2:])"
)


class UnpackError(Exception):
    """The archive was refused or could not be unpacked; the message says why."""


def unpack(tarball: Path, dest: Path, uid: int, gid: int, max_bytes: int | None = None) -> dict[str, int]:
    """Unpack `tarball` into `dest` (an empty directory owned by uid, made here if missing) as uid:gid. Returns
    the unpacker's report (counts, skipped special files)."""
    if uid <= 0 or gid <= 0:
        raise UnpackError("archives are never unpacked as root")
    dest.mkdir(mode=0o700, exist_ok=True)
    os.chown(dest, uid, gid)
    args = [sys.executable, "-I", "-S", "-c", CHILD, str(SRC_ROOT), str(dest), str(uid), str(gid), str(max_bytes or 0)]
    with open(tarball, "rb") as source:
        proc = subprocess.run(
            args, stdin=source, capture_output=True, timeout=UNPACK_TIMEOUT, check=False, env={"LC_ALL": "C.UTF-8"}
        )
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip().splitlines()
        raise UnpackError(f"slug refused: {message[-1] if message else f'unpacker exit status {proc.returncode}'}")
    pairs = (line.split("=", 1) for line in proc.stdout.decode().splitlines() if "=" in line)
    return {key: int(value) for key, value in pairs}

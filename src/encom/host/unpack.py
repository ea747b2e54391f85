"""Unpacking a slug as the app's uid, chrooted into the job's empty /app: never as root in the host's namespace.

A small child process (Debian-independent: the interpreter encomd runs on, without site-packages) is handed the
tarball as its stdin. It imports everything it needs, chroots into the destination, drops to the app's uid and gid
(no supplementary groups) and only then reads the archive with `encom.build.untar` (no link ever followed, no
setuid bit or device kept). Whatever the archive holds, the child can write nothing but the app's own directory.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from typing import IO

SRC_ROOT = Path(__file__).resolve().parents[2]  # what holds the `encom` package
UNPACK_TIMEOUT = 300.0
# The child: the path to import encom from, then the destination, uid, gid and byte limit.
CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); from encom.host.unpack import child_main; child_main(sys.argv[2:])"
)
EXIT_REFUSED = 3
CHILD_MEMORY = 1 << 30  # address space of the child: a huge PAX header cannot take the host's memory
GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20


class UnpackError(Exception):
    """The archive was refused or could not be unpacked; the message says why."""


def unpack(tarball: Path, dest: Path, uid: int, gid: int, max_bytes: int | None = None) -> dict[str, object]:
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
    report: dict[str, object] = json.loads(proc.stdout)
    return report


def child_main(argv: list[str]) -> None:
    """In the child: confine, drop privileges, unpack stdin into "/"."""
    from encom.build import untar

    dest, uid, gid, max_bytes = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    "".encode("latin-1").decode("ascii")  # codecs tarfile may look up for PAX headers, loaded now
    os.chroot(dest)  # from here on nothing of the host's file system can be reached, not even the stdlib
    os.chdir("/")
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid or os.getgroups():
        sys.exit("could not drop privileges")
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
    os.umask(0o077)
    root = os.open("/", untar.DIR_FLAGS)
    stream, inflater = decompressed(sys.stdin.buffer)
    try:
        report = untar.extract(stream, root, max_bytes or None)
    except untar.ArchiveError as exc:
        print(str(exc), file=sys.stderr)
        sys.exit(EXIT_REFUSED)
    finally:
        # The inflater must end before the interpreter does (a daemon thread killed at exit needs libgcc_s, which
        # is not in the chroot): closing the pipe stops it (EPIPE) if the tar ended before the gzip stream.
        stream.close()
        if inflater is not None:
            inflater.join()
    print(json.dumps(report.__dict__))


def decompressed(source: IO[bytes]) -> tuple[IO[bytes], threading.Thread | None]:
    """A gzip stream is inflated by a thread (zlib releases the GIL) while the caller unpacks: on two cores that
    hides most of the inflating. Anything else is returned as is (tarfile reads plain tar)."""
    head = source.peek(2)[:2] if hasattr(source, "peek") else b""
    if head != GZIP_MAGIC:
        return source, None
    read_end, write_end = os.pipe()
    inflater = threading.Thread(target=_inflate, args=(source, write_end))
    inflater.start()
    return os.fdopen(read_end, "rb", buffering=CHUNK), inflater


def _inflate(source: IO[bytes], out: int) -> None:
    """gzip members one after another (as `gzip` concatenates them) into the pipe; corrupt data ends the stream
    early, which tarfile reports as a truncated archive."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        while chunk := source.read(CHUNK):
            while chunk:
                data = inflater.decompress(chunk)
                if data:
                    _write_all(out, data)
                chunk = b""
                if inflater.eof:
                    chunk, inflater = inflater.unused_data, zlib.decompressobj(wbits=31)
    except (zlib.error, OSError):
        pass
    finally:
        os.close(out)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]

"""The unpacker's child process (see `encom.host.unpack`): confine, drop privileges, unpack stdin into "/".

Run as `python -I -S -c ...` once per job start, so it imports only what it needs (each import costs start-up time),
and imports everything before the chroot: after it, nothing of the host's file system is reachable.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import zlib

from encom.build import untar

TYPE_CHECKING = False  # what typing.TYPE_CHECKING is, without importing typing (mypy takes the name as true)
if TYPE_CHECKING:
    from typing import BinaryIO

EXIT_REFUSED = 3
CHILD_MEMORY = 1 << 30  # address space: a huge PAX header cannot take the host's memory
GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20


def child_main(argv: list[str]) -> None:
    """argv: the destination, uid, gid and byte limit (0: none). Prints the report as `key=value` lines."""
    dest, uid, gid, max_bytes = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    "".encode("latin-1").decode("ascii")  # codecs tarfile may look up for PAX headers, loaded now
    os.chroot(dest)
    os.chdir("/")
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid or os.getgroups():
        sys.exit("could not drop privileges")
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
    os.umask(0o077)
    root = os.open("/", untar.DIR_FLAGS)
    with open(0, "rb", buffering=CHUNK, closefd=False) as tarball:  # stdin: the tarball, opened by the host
        stream, inflater = decompressed(tarball)
        try:
            report = untar.extract(stream, root, max_bytes or None)
        except untar.ArchiveError as exc:
            print(str(exc), file=sys.stderr)
            sys.exit(EXIT_REFUSED)
        finally:
            # The inflater must end before the interpreter does (a thread killed at exit needs libgcc_s, which is
            # not in the chroot): closing the pipe stops it (EPIPE) if the tar ended before the gzip stream.
            stream.close()
            if inflater is not None:
                inflater.join()
    print(f"files={report.files}\ndirs={report.dirs}\nlinks={report.links}\nbytes={report.bytes}")
    print(f"skipped={len(report.skipped)}")


def decompressed(source: BinaryIO) -> tuple[BinaryIO, threading.Thread | None]:
    """A gzip stream is inflated by a thread (zlib releases the GIL) while the caller unpacks: on two cores that
    hides most of the inflating. Anything else is returned as is (tarfile reads plain tar). `source` is buffered
    (it has `peek`)."""
    if source.peek(2)[:2] != GZIP_MAGIC:  # type: ignore[attr-defined]
        return source, None
    read_end, write_end = os.pipe()
    inflater = threading.Thread(target=_inflate, args=(source, write_end))
    inflater.start()
    return open(read_end, "rb", buffering=CHUNK), inflater


def _inflate(source: BinaryIO, out: int) -> None:
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

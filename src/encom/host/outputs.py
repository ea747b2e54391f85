"""A build's outputs, collected by the host after the build has ended: builds hold no credential to write blobs.

The build container gets an empty directory of its own at /encom/out (owned by the app's uid). The slugbuilder writes
its slug, its build cache and its result there; once the container is gone (so nothing of the build runs any more),
the host uploads each output the job spec declares to the blob path the spec names. The directory was writable by
hostile code, so every file is opened as hostile: no link followed, a regular file owned by the app's uid with one
link, at most its output's size, read through the descriptor that was checked.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from encom.api.errors import ApiError
from encom.blobstore.client import BlobstoreClient
from encom.host import disk

CONTAINER_DIR = "/encom/out"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Output:
    file: str  # its name in the output directory
    max_size: int


# The outputs a build may declare (HostJobSpec.outputs checks the names and their blob paths).
OUTPUTS = {
    "slug": Output("slug.tgz", 2 << 30),
    "cache": Output("cache.tar", 2 << 30),
    "result": Output("result.json", 64 << 10),
}


class OutputError(Exception):
    """An output the host refuses to store, or could not store; the message says which and why."""


def output_dir(job_dir: Path) -> Path:
    """On the job's own disk, so a build cannot fill the host's disk through its outputs either."""
    return disk.mount_of(job_dir) / "out"


def prepare(directory: Path, uid: int, gid: int) -> None:
    """The empty output directory, the app uid's alone (inside the job's root-only directory)."""
    directory.mkdir(mode=0o700)
    os.chown(directory, uid, gid)


def remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)  # fd-based on Linux: links inside are removed, never followed


def open_output(dir_fd: int, output: Output, uid: int) -> tuple[int, int] | None:
    """(fd, size) of an output file checked as hostile, or None when the build did not write it."""
    try:
        fd = os.open(output.file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        reason = "is a symbolic link" if exc.errno == errno.ELOOP else f"cannot be opened ({exc.strerror})"
        raise OutputError(f"build output {output.file} {reason}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"build output {output.file} is not a regular file")
        if st.st_uid != uid or st.st_nlink != 1:
            raise OutputError(f"build output {output.file} is not the build's own file")
        if st.st_size > output.max_size:
            raise OutputError(f"build output {output.file} is larger than {output.max_size >> 20} MiB")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


async def chunks(fd: int, size: int) -> AsyncIterator[bytes]:
    """At most `size` bytes of the file, read in a thread so the event loop never waits on the disk."""
    left = size
    while left > 0:
        data = await asyncio.to_thread(os.read, fd, min(CHUNK, left))
        if not data:
            return
        left -= len(data)
        yield data


async def collect(directory: Path, outputs: dict[str, str], uid: int, blobstore: BlobstoreClient) -> list[str]:
    """Upload each declared output present in `directory` to its blob path; the names of those uploaded."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    stored = []
    try:
        for name, blob_path in outputs.items():
            opened = open_output(dir_fd, OUTPUTS[name], uid)
            if opened is None:
                continue
            fd, size = opened
            try:
                await blobstore.put(blob_path, chunks(fd, size))
            except ApiError as exc:
                raise OutputError(f"build output {OUTPUTS[name].file} could not be stored: {exc.message}") from None
            finally:
                os.close(fd)
            stored.append(name)
    finally:
        os.close(dir_fd)
    return stored

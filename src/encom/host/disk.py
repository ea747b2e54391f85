"""A job's own disk: one ext4 filesystem of `temp_disk` bytes holding its /app and /tmp.

The filesystem lives in a sparse image file in the job's directory, loop-mounted (nosuid, nodev) at
`<job>/disk`: a job that fills it gets ENOSPC, and the host's disk loses at most `temp_disk` bytes to it. A tmpfs
would cap the size too, but its pages count as the job's memory. No journal and lazy inode tables keep `mkfs`
to a few milliseconds; `-m 0` gives the job every block (none reserved for root).

Layout: `<job>/disk.img`, mounted at `<job>/disk`, with `app/` (the slug, the job's /app) and `tmp/` (its /tmp).
When the job ends the filesystem is unmounted and the image deleted: what the job wrote is never walked by root.
Images are sparse, so a job is admitted only while the host's free disk covers its size plus what the other
jobs' disks may still grow by: together they can never fill the host's disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE = "disk.img"
MOUNT = "disk"
MKFS = ["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "lazy_itable_init=1,root_owner=0:0"]
MOUNT_OPTIONS = "loop,nosuid,nodev"
COMMAND_TIMEOUT = 60.0
MOUNTINFO = Path("/proc/self/mountinfo")


class DiskError(Exception):
    """The job's disk could not be made (the job fails to start with this message)."""


def image_of(job_dir: Path) -> Path:
    return job_dir / IMAGE


def mount_of(job_dir: Path) -> Path:
    return job_dir / MOUNT


def _run(args: list[str]) -> None:
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DiskError(f"{args[0]} failed: {exc}") from None
    if result.returncode != 0:
        raise DiskError(f"{args[0]} failed: {(result.stderr or result.stdout).strip() or result.returncode}")


def _sparse_image(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def is_mounted(path: Path, mountinfo: Path = MOUNTINFO) -> bool:
    """Whether `path` is a mount point in this process's mount namespace."""
    target = str(path)
    with contextlib.suppress(OSError):
        for line in mountinfo.read_text().splitlines():
            fields = line.split()
            # Mount points with spaces are octal-escaped; job directories never have any.
            if len(fields) > 4 and fields[4] == target:
                return True
    return False


def may_still_grow(jobs_dir: Path, exclude: Path) -> int:
    """Bytes the disks of this host's jobs (but `exclude`'s) may still take from the host's disk."""
    total = 0
    for image in jobs_dir.glob(f"*/{IMAGE}"):
        if image.parent == exclude:
            continue
        with contextlib.suppress(OSError):
            st = image.stat()
            total += max(0, st.st_size - st.st_blocks * 512)
    return total


def check_room(job_dir: Path, size: int) -> None:
    """A DiskError when the host's disk cannot hold this disk besides what the other jobs' disks may still take."""
    stat = os.statvfs(job_dir)
    free = stat.f_bavail * stat.f_frsize
    committed = may_still_grow(job_dir.parent, job_dir)
    if free - committed < size:
        raise DiskError(
            f"not enough disk on this host for temp_disk {size >> 20} MiB: {free >> 20} MiB free, "
            f"of which the other jobs' disks may still take {committed >> 20} MiB"
        )


def create(job_dir: Path, size: int, uid: int, gid: int) -> Path:
    """Make, mount and lay out the job's disk; returns the mount point. Blocking (a few milliseconds)."""
    image, mount = image_of(job_dir), mount_of(job_dir)
    remove(job_dir)  # a half-made disk of an earlier attempt
    check_room(job_dir, size)
    try:
        _sparse_image(image, size)
        _run([*MKFS, str(image)])
        mount.mkdir(mode=0o700, exist_ok=True)
        _run(["mount", "-o", MOUNT_OPTIONS, str(image), str(mount)])
        os.chmod(mount, 0o711)
        for name, mode in (("app", 0o700), ("tmp", 0o1777)):
            sub = mount / name
            sub.mkdir()
            os.chown(sub, uid, gid)
            os.chmod(sub, mode)
    except BaseException:
        remove(job_dir)
        raise
    return mount


def remove(job_dir: Path) -> None:
    """Unmount the job's disk (lazily when something still holds it) and delete its image. Blocking."""
    image, mount = image_of(job_dir), mount_of(job_dir)
    if is_mounted(mount):
        try:
            _run(["umount", str(mount)])
        except DiskError as exc:
            log.warning("%s; detaching it lazily", exc)
            with contextlib.suppress(DiskError):
                _run(["umount", "-l", str(mount)])
    if not is_mounted(mount):
        with contextlib.suppress(OSError):
            mount.rmdir()  # an empty mount point (never a walk of what the job wrote)
    image.unlink(missing_ok=True)


def has_disk(job_dir: Path) -> bool:
    return image_of(job_dir).exists() or is_mounted(mount_of(job_dir))

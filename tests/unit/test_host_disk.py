"""Reading which job disks are mounted, from /proc/self/mountinfo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from encom.host import disk

MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
310 27 7:3 / /var/lib/encom/host/jobs/abc/disk rw,nosuid,nodev,relatime - ext4 /dev/loop3 rw
"""


def test_is_mounted_reads_mount_points(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert disk.is_mounted(Path("/var/lib/encom/host/jobs/abc/disk"), info)
    assert not disk.is_mounted(Path("/var/lib/encom/host/jobs/abc"), info)
    assert not disk.is_mounted(Path("/var/lib/encom/host/jobs/abc/disk"), tmp_path / "missing")


def test_layout(tmp_path: Path) -> None:
    assert disk.image_of(tmp_path) == tmp_path / "disk.img"
    assert disk.mount_of(tmp_path) == tmp_path / "disk"
    assert not disk.has_disk(tmp_path)
    disk.remove(tmp_path)  # nothing to remove: no error


def test_a_disk_the_host_cannot_hold_is_refused(tmp_path: Path) -> None:
    for name, size, used in (("a", 10 << 30, 1 << 20), ("b", 5 << 30, 0)):
        (tmp_path / name).mkdir()
        image = disk.image_of(tmp_path / name)
        image.write_bytes(b"x" * used)
        os.truncate(image, size)
    grow = disk.may_still_grow(tmp_path, tmp_path / "b")
    assert 10 << 30 > grow >= (10 << 30) - (2 << 20)  # a's size less what it holds (rounded to blocks)
    assert disk.may_still_grow(tmp_path, tmp_path / "c") == grow + (5 << 30)
    job = tmp_path / "c"
    job.mkdir()
    with pytest.raises(disk.DiskError, match=r"^not enough disk on this host for temp_disk \d+ MiB: \d+ MiB free"):
        disk.create(job, 1 << 60, 1000, 1000)
    assert not disk.has_disk(job)

"""Reading which job disks are mounted, from /proc/self/mountinfo."""

from __future__ import annotations

from pathlib import Path

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

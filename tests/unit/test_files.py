"""Private files: 0600 from the first byte, replaced atomically."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from encom.api.files import private_dir, tighten_state_dir, write_private


def test_a_private_file_is_owner_only_even_over_a_stale_tmp(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    stale = tmp_path / "key.pem.tmp"
    stale.write_text("left by a crash")
    stale.chmod(0o644)
    write_private(path, "secret")
    write_private(path, b"newer secret")
    assert path.read_bytes() == b"newer secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not stale.exists()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_dirs_are_owner_only_from_creation_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        made = private_dir(tmp_path / "data" / "host" / "jobs")
    finally:
        os.umask(previous)
    assert [_mode(p) for p in (tmp_path / "data", tmp_path / "data" / "host", made)] == [0o700] * 3


def test_an_older_state_dir_is_tightened_at_its_top(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "controller").mkdir(parents=True, mode=0o755)
    (data / "controller").chmod(0o755)
    data.chmod(0o755)
    (data / "encomd.json").write_text("{}")
    (data / "encomd.json").chmod(0o644)
    (data / "controller" / "controller.db").write_text("")
    (data / "controller" / "controller.db").chmod(0o644)
    (data / "link").symlink_to("/etc/hostname")
    tighten_state_dir(data)
    assert (_mode(data), _mode(data / "controller"), _mode(data / "encomd.json")) == (0o700, 0o700, 0o600)
    assert _mode(Path("/etc/hostname")) & 0o044  # a symlink's target is not touched

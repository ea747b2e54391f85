"""Private files: 0600 from the first byte, replaced atomically."""

from __future__ import annotations

import stat
from pathlib import Path

from encom.api.files import write_private


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

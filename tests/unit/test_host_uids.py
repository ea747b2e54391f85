"""App uids: stable per app, never handed to another app, even after the app is deleted or encomd restarts."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from encom.host.uids import UidAllocator


def test_a_deleted_apps_uid_is_never_given_again(tmp_path: Path) -> None:
    table = tmp_path / "uids.json"
    uids = UidAllocator(table, first=5000)
    assert (uids.uid_for("a"), uids.uid_for("b"), uids.uid_for("a")) == (5000, 5001, 5000)
    uids.forget("b")
    uids.forget("b")  # idempotent
    assert "b" not in table.read_text()
    assert UidAllocator(table, first=5000).uid_for("c") == 5002  # after a restart too
    uids = UidAllocator(table, first=5000)
    uids.forget("c")
    uids.forget("a")
    assert UidAllocator(table, first=5000).uid_for("d") == 5003
    assert stat.S_IMODE(table.stat().st_mode) == 0o600


def test_the_older_table_format_is_read_and_its_highest_uid_kept(tmp_path: Path) -> None:
    table = tmp_path / "uids.json"
    table.write_text(json.dumps({"a": 5000, "b": 5007}))
    uids = UidAllocator(table, first=5000)
    assert (uids.uid_for("b"), uids.uid_for("new")) == (5007, 5008)
    assert json.loads(table.read_text()) == {"next": 5009, "apps": {"a": 5000, "b": 5007, "new": 5008}}


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"apps": {"a": "x"}}', '{"apps": [], "next": 1}'])
def test_an_unreadable_table_is_refused_rather_than_guessed(tmp_path: Path, text: str) -> None:
    table = tmp_path / "uids.json"
    table.write_text(text)
    with pytest.raises(RuntimeError):
        UidAllocator(table)

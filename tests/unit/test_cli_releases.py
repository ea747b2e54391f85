"""`encom release show / rollback`'s pure pieces: release references, the rollback target, the show lines."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from encom.api.types import Deployment, ProcessType, Release
from encom.cli.output import CliError
from encom.cli.release_commands import (
    deployment_rows,
    find_release,
    parse_version,
    previous_release,
    show_lines,
)
from encom.cli.releases import ReleaseList

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def release(version: int, rid: str | None = None, **meta: str) -> Release:
    return Release(
        id=rid or f"{version:04d}aaaa-0000", app_id="app", version=version, created_at=NOW, meta=meta,
        env={"B": "2", "A": "x=y"}, processes={"web": ProcessType(cmd="python app.py")},
    )  # fmt: skip


def listing(current: int | None, count: int = 3) -> ReleaseList:
    releases = [release(v) for v in range(count, 0, -1)]
    current_id = next((r.id for r in releases if r.version == current), None)
    return ReleaseList(releases, current_id)


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("v3", 3),
        ("V12", 12),
        ("3", None),
        ("12345678", None),
        (" v1 ", 1),
        ("v", None),
        ("vx", None),
        ("v-1", None),
        ("abc-123", None),
    ],
)
def test_parse_version(ref: str, expected: int | None) -> None:
    assert parse_version(ref) == expected


def test_find_release() -> None:
    found = listing(3)
    assert find_release(found, "v2") is found.releases[1]
    assert find_release(found, "0001aaaa-0000") is found.releases[2]
    assert find_release(found, "0003aa") is found.releases[0]
    assert find_release(found, "v9") is None and find_release(found, "ffff") is None
    assert find_release(found, "000") is None  # too short a prefix
    shared = ReleaseList([release(1, "abcd-1"), release(2, "abcd-2")], None)
    digits = ReleaseList([release(1, "12345678-0000")], None)
    assert find_release(digits, "12345678") is digits.releases[0]
    with pytest.raises(CliError, match="ambiguous"):
        find_release(shared, "abcd")


def test_previous_release() -> None:
    assert previous_release(listing(3)).version == 2
    assert previous_release(listing(2)).version == 1
    for no_target in (listing(1), listing(None), listing(1, count=1)):
        with pytest.raises(CliError, match="no release to roll back to"):
            previous_release(no_target)


def test_show_lines() -> None:
    lines = show_lines(release(4, **{"git.commit": "0123456789abcdef"}))
    assert lines[0] == "Version:     v4" and "Description: Deploy 0123456" in lines
    assert "Commit:      0123456789abcdef" in lines
    assert lines[lines.index("Env:") + 1 : lines.index("Limits:")] == ["  A=x=y", "  B=2"]
    assert "Commit:" not in "\n".join(show_lines(release(1)))


def test_deployment_rows() -> None:
    older = Deployment(
        id="d1", app_id="app", old_release_id=None, new_release_id="0001aaaa-0000", strategy="all-at-once",
        status="complete", processes={}, created_at=NOW, finished_at=NOW,
    )  # fmt: skip
    newer = older.model_copy(update={"id": "d2", "status": "running", "created_at": NOW.replace(year=2027)})
    newer = newer.model_copy(update={"new_release_id": "gone", "finished_at": None})
    rows = deployment_rows([older, newer], [release(1)])
    assert [row[:3] for row in rows] == [["d2", "running", "gone"], ["d1", "complete", "v1"]]
    assert rows[0][4] == "" and rows[1][4].endswith("ago")

"""`encom run`'s exit status, from the job record or the attach exit frame."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from encom.api.attach import AttachExit
from encom.api.types import Job
from encom.cli.run import exit_code

T0 = datetime(2026, 11, 24, tzinfo=UTC)


def job(state: str, exit_status: int | None = None) -> Job:
    return Job.model_validate(
        {"id": "j1", "app_id": "a", "release_id": "r", "type": "", "state": state, "exit_status": exit_status,
         "created_at": T0, "updated_at": T0}
    )  # fmt: skip


@pytest.mark.parametrize(
    ("state", "status", "code"),
    [
        ("down", 0, 0),
        ("down", None, 0),
        ("crashed", 42, 42),
        ("crashed", 137, 137),
        ("failed", None, 1),
        ("failed", 127, 127),
    ],
)
def test_exit_code(state: str, status: int | None, code: int) -> None:
    assert exit_code(job(state, status)) == code
    assert exit_code(AttachExit.model_validate({"state": state, "exit_status": status})) == code  # the exit frame

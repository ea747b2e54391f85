"""`encom run`'s exit status and output, from the job records."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from encom.api.types import Job, LogLine
from encom.cli.run import Output, exit_code

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


def test_output_prints_each_line_of_the_job_once(capsys: pytest.CaptureFixture[str]) -> None:
    def line(msg: str, job_id: str = "j1", stream: str = "stdout", source: str = "app") -> LogLine:
        return LogLine.model_validate(
            {"timestamp": T0, "app_id": "a", "job_id": job_id, "process_type": "", "msg": msg, "stream": stream,
             "source": source}
        )  # fmt: skip

    output = Output("j1")
    output.show([line("one"), line("other job", job_id="j2"), line("State changed", source="encom")])
    output.show([line("one"), line("oops", stream="stderr"), line("two")])
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("one\ntwo\n", "oops\n")

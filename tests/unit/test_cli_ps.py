from datetime import UTC, datetime

from encom.api.types import Job
from encom.cli.jobs import JobList, job_rows, state_text


def job(state: str, **fields: object) -> Job:
    now = datetime.now(UTC)
    base: dict[str, object] = {
        "id": "j1",
        "app_id": "a",
        "release_id": "r1",
        "type": "web",
        "state": state,
        "created_at": now,
        "updated_at": now,
    }
    return Job.model_validate(base | fields)


def test_ended_jobs_say_why() -> None:
    assert state_text(job("up")) == "up"
    assert state_text(job("crashed", exit_status=137, error="out of memory")) == "crashed (out of memory)"
    assert state_text(job("crashed", exit_status=3)) == "crashed (exit 3)"
    assert state_text(job("down", exit_status=0)) == "down"


def test_rows_show_release_version_and_restarts() -> None:
    rows = job_rows(JobList([job("up", port=55000, restarts=2)], {"r1": 4}))
    assert rows[0][:6] == ["j1", "web", "up", "55000", "v4", "2"]

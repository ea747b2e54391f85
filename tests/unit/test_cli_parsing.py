"""The CLI's small pure pieces: argument parsing, tables, the scale tracker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from encom.api.types import Formation, Job, JobState, ProcessType, Release, Route
from encom.cli.env import env_lines, parse_assignments
from encom.cli.output import CliError, age, duration, format_table
from encom.cli.releases import ReleaseList, release_rows
from encom.cli.routes import route_row, split_domain_path
from encom.cli.scale import JobTracker, changes, current_counts, format_counts, parse_counts

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_parse_assignments() -> None:
    assert parse_assignments(["A=1", "B=x=y", "EMPTY="]) == {"A": "1", "B": "x=y", "EMPTY": ""}


@pytest.mark.parametrize("bad", ["NOEQUALS", "=value", "BAD KEY=1"])
def test_bad_assignment_names_the_argument(bad: str) -> None:
    with pytest.raises(CliError, match=f'invalid argument "{bad}"'):
        parse_assignments(["OK=1", bad])


def test_env_lines_are_sorted() -> None:
    assert env_lines({"B": "2", "A": "1"}) == ["A=1", "B=2"]


def test_parse_counts() -> None:
    assert parse_counts(["web=3", "worker=0"]) == {"web": 3, "worker": 0}
    for bad in ("web", "web=-1", "web=x", "=2"):
        with pytest.raises(CliError, match=f'invalid argument "{bad}"'):
            parse_counts([bad])


def test_table_columns_are_aligned_without_trailing_blanks() -> None:
    table = format_table(["ID", "NAME", "X"], [["1", "example", ""], ["12345", "a", "yes"]])
    assert table.splitlines() == ["ID     NAME     X", "1      example", "12345  a        yes"]


def test_empty_table_is_the_header() -> None:
    assert format_table(["FINGERPRINT", "COMMENT"], []) == "FINGERPRINT  COMMENT"


def test_age_and_duration() -> None:
    assert age(T0, T0 + timedelta(seconds=5)) == "5s ago"
    assert age(T0, T0 + timedelta(minutes=3, seconds=2)) == "3m ago"
    assert age(T0, T0 + timedelta(days=2)) == "2d ago"
    assert duration(1.2344) == "1.234s"
    assert duration(61.5) == "1m1.500s"


def release(version: int, processes: list[str], rid: str | None = None, **meta: str) -> Release:
    return Release(
        id=rid or f"r{version}",
        app_id="app",
        version=version,
        processes={p: ProcessType(cmd="run") for p in processes},
        meta=meta,
        created_at=T0,
    )


def test_release_rows_mark_the_current_one() -> None:
    rows = release_rows(ReleaseList([release(1, []), release(2, [], description="Set A")], current_id="r2"))
    assert [r[:2] for r in rows] == [["*", "v2"], ["", "v1"]]
    assert rows[0][4] == "Set A"
    table = format_table(["", "VERSION", "ID", "CREATED", "DESCRIPTION"], rows)
    current = table.splitlines()[1]
    assert current.startswith("*  v2 ") and " r2 " in current and current.endswith("Set A")
    assert table.splitlines()[2].startswith("   v1 ")


def test_split_domain_path() -> None:
    assert split_domain_path("example.com") == ("example.com", "/")
    assert split_domain_path("example.com/api") == ("example.com", "/api/")
    assert split_domain_path("example.com/api/") == ("example.com", "/api/")
    with pytest.raises(CliError):
        split_domain_path("/path")


def test_route_rows() -> None:
    http = Route(id="u1", app_id="a", type="http", domain="x.localhost", service="a-web", created_at=T0, updated_at=T0)
    tcp = Route(id="u2", app_id="a", type="tcp", port=3001, service="a-web", sticky=True, created_at=T0, updated_at=T0)
    assert route_row(http) == ["http", "x.localhost", "/", "a-web", "false", "default", "http/u1"]
    assert route_row(tcp) == ["tcp", "3001", "-", "a-web", "true", "-", "tcp/u2"]


def test_counts_cover_every_process_type_of_the_release() -> None:
    formation = Formation(app_id="app", release_id="r1", processes={"web": 3}, updated_at=T0)
    counts = current_counts(release(1, ["worker", "web"]), formation)
    assert format_counts(counts) == "web=3 worker=0"
    assert format_counts(current_counts(release(1, ["web"]), None)) == "web=0"
    assert changes(counts, {"web": 3, "worker": 2}) == {"worker": (0, 2)}


def job(jid: str, state: JobState, seconds: int = 0, type: str = "web", release_id: str = "r1") -> Job:
    when = T0 + timedelta(seconds=seconds)
    return Job(id=jid, app_id="app", release_id=release_id, type=type, state=state, created_at=T0, updated_at=when)


def test_tracker_scale_up_completes_when_every_job_is_up() -> None:
    tracker = JobTracker("r1", targets={"web": 2}, growing={"web"})
    assert tracker.apply(job("a", "up"))
    assert not tracker.done()
    assert tracker.apply(job("b", "starting", 1))
    assert not tracker.done()
    assert tracker.missing() == "web=2 (1 up)"
    assert tracker.apply(job("b", "up", 2))
    assert tracker.done()


def test_tracker_ignores_repeats_stale_reports_and_other_releases() -> None:
    tracker = JobTracker("r1", targets={"web": 1}, growing={"web"})
    assert tracker.apply(job("a", "up", 5))
    assert not tracker.apply(job("a", "up", 6))
    assert not tracker.apply(job("a", "starting", 1))
    assert not tracker.apply(job("z", "up", 7, release_id="r0"))
    assert tracker.done()


def test_tracker_scale_down_waits_for_the_extra_jobs_to_stop() -> None:
    tracker = JobTracker("r1", targets={"web": 1}, growing=set())
    for jid in "abc":
        tracker.apply(job(jid, "up"))
    tracker.apply(job("b", "stopping", 1))
    tracker.apply(job("c", "down", 1))
    assert not tracker.done()
    tracker.apply(job("b", "down", 2))
    assert tracker.done()


def test_tracker_reports_a_crash_while_growing() -> None:
    tracker = JobTracker("r1", targets={"web": 2, "worker": 0}, growing={"web"})
    crashed = job("a", "crashed", 1).model_copy(update={"error": "exit status 1"})
    assert tracker.failure(crashed) == "web job a crashed: exit status 1"
    assert tracker.failure(job("w", "crashed", 1, type="worker")) is None

"""The scheduler's cluster view: adopting host jobs, ending them, restarts owed, stale events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from encom.api.types import App, Artifact, ExpandedFormation, HostJob, ProcessType, Release
from encom.scheduler.backoff import DynoSlot
from encom.scheduler.reconcile import FormationKey, reconcile
from encom.scheduler.specs import job_spec
from encom.scheduler.state import SchedulerState

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEY = FormationKey("app-id", "rel-id", "web")


def formation(web: int = 2, worker: int = 0) -> ExpandedFormation:
    app = App(id="app-id", name="shop", created_at=T0, updated_at=T0)
    processes = {"web": ProcessType(cmd="serve"), "worker": ProcessType(cmd="work")}
    release = Release(id="rel-id", app_id=app.id, processes=processes, version=1, created_at=T0)
    artifact = Artifact(id="art", url="/slugs/x.tgz", created_at=T0)
    return ExpandedFormation(
        app=app, release=release, artifact=artifact, processes={"web": web, "worker": worker}, updated_at=T0
    )


def host_job(index: int, state: str = "up", job_id: str | None = None, host: str = "h1", **kw: object) -> HostJob:
    spec = job_spec(formation(), "web", index, job_id=job_id or f"job{index}")
    return HostJob.model_validate({"spec": spec, "host_id": host, "state": state, "created_at": T0, **kw})


def state_with(web: int = 2) -> SchedulerState:
    state = SchedulerState()
    state.set_formation(formation(web))
    return state


def test_desired_counts_skip_zero_and_unknown_types() -> None:
    state = SchedulerState()
    f = formation(web=2, worker=0)
    state.set_formation(f.model_copy(update={"processes": {"web": 2, "worker": 0, "ghost": 1}}))
    assert state.desired() == {KEY: 2}
    state.set_formation(formation(web=0))
    assert state.desired() == {}


def test_adopting_running_jobs() -> None:
    state = state_with()
    change = state.apply(host_job(1), now=0.0)
    assert change is not None and change.host_job.spec.process_type and change.host_job.state == "up"
    views, slots = state.views()
    assert [(v.id, v.index, v.state, v.host_id) for v in views] == [("job1", 1, "up", "h1")]
    assert slots == []


def test_repeated_and_earlier_states_are_ignored() -> None:
    state = state_with()
    assert state.apply(host_job(1, "up"), now=0.0) is not None
    assert state.apply(host_job(1, "up"), now=1.0) is None
    assert state.apply(host_job(1, "starting"), now=2.0) is None
    assert state.jobs["job1"].state == "up"
    assert state.apply(host_job(1, "up", port=55001), now=3.0) is not None


def test_crash_leaves_a_restart_slot_on_the_same_index() -> None:
    state = state_with()
    state.apply(host_job(1), now=0.0)
    state.apply(host_job(2), now=0.0)
    change = state.apply(host_job(2, "crashed", exit_status=1), now=5.0)
    assert change is not None and change.host_job.state == "crashed"
    assert "job2" not in state.jobs
    views, slots = state.views()
    assert [(s.key, s.index, s.due) for s in slots] == [(KEY, 2, 5.0)]
    plan = reconcile(state.desired(), views, slots, ["h1"], now=5.0)
    assert [(s.index, s.restart is not None) for s in plan.start] == [(2, True)]


def test_replacement_reports_its_restart_count() -> None:
    state = state_with(web=1)
    state.apply(host_job(1), now=0.0)
    state.apply(host_job(1, "crashed"), now=1.0)
    (slot,) = state.slots.values()
    state.take_slot(slot)
    replacement = state.add_pending(job_spec(formation(), "web", 1, job_id="j2"), "h1", now=1.0)
    assert replacement.restarts == 1
    change = state.apply(host_job(1, "starting", job_id="j2"), now=1.1)
    assert change is not None and change.restarts == 1


def test_backoff_after_five_quick_crashes() -> None:
    state = state_with(web=1)
    now = 0.0
    for n in range(6):
        state.apply(host_job(1, "up", job_id=f"j{n}"), now=now)
        state.apply(host_job(1, "crashed", job_id=f"j{n}"), now=now)
        (slot,) = state.slots.values()
        expected = 0.0 if n < 5 else 10.0
        assert slot.due == now + expected, f"restart {n + 1}"
        state.take_slot(slot)
    assert state.views()[0] == []


def test_counter_resets_after_five_minutes_up() -> None:
    state = state_with(web=1)
    for n in range(6):
        state.apply(host_job(1, "crashed", job_id=f"j{n}"), now=0.0)
        state.take_slot(next(iter(state.slots.values())))
    started = T0
    ended = T0 + timedelta(minutes=5)
    state.apply(host_job(1, "up", job_id="long", started_at=started), now=0.0)
    state.apply(host_job(1, "crashed", job_id="long", started_at=started, ended_at=ended), now=300.0)
    (slot,) = state.slots.values()
    assert slot.due == 300.0
    assert state.tracker.count(DynoSlot("app-id", "web", 1)) == 1


def test_jobs_stopped_on_purpose_are_not_restarted() -> None:
    state = state_with()
    state.apply(host_job(1), now=0.0)
    state.request_stop("job1")
    assert state.views()[0] == []
    state.apply(host_job(1, "stopping"), now=1.0)
    state.apply(host_job(1, "down"), now=2.0)
    assert state.slots == {}


def test_job_stopped_behind_our_back_is_restarted() -> None:
    state = state_with()
    state.apply(host_job(1), now=0.0)
    state.apply(host_job(1, "stopping"), now=1.0)
    assert [v.state for v in state.views()[0]] == ["stopping"]
    state.apply(host_job(1, "down", exit_status=0), now=2.0)
    assert [s.index for s in state.slots.values()] == [1]


def test_jobs_of_unwanted_formations_are_not_restarted() -> None:
    state = state_with()
    state.apply(host_job(1), now=0.0)
    state.remove_app("app-id")
    state.apply(host_job(1, "crashed"), now=1.0)
    assert state.slots == {}


def test_replayed_events_of_ended_jobs_are_ignored() -> None:
    state = state_with()
    state.apply(host_job(1), now=0.0)
    state.apply(host_job(1, "crashed"), now=1.0)
    assert state.apply(host_job(1, "up"), now=2.0) is None
    assert "job1" not in state.jobs


def test_failed_start_counts_as_a_restart() -> None:
    state = state_with(web=1)
    state.add_pending(job_spec(formation(), "web", 1, job_id="j1"), "h1", now=0.0)
    change = state.fail_start("j1", "host h1: no such artifact", now=0.5)
    assert change is not None
    assert change.host_job.state == "failed" and change.host_job.error == "host h1: no such artifact"
    assert [s.index for s in state.slots.values()] == [1]


def test_lost_host_marks_jobs_down_without_backoff_and_allows_readoption() -> None:
    state = state_with()
    state.apply(host_job(1, host="h1"), now=0.0)
    state.apply(host_job(2, host="h2"), now=0.0)
    changes = state.remove_host("h1", now=1.0)
    assert [(c.host_job.id, c.host_job.state) for c in changes] == [("job1", "down")]
    assert "host h1 is gone" in (changes[0].host_job.error or "")
    assert state.slots == {}
    views, _ = state.views()
    plan = reconcile(state.desired(), views, [], ["h2", "h3"], now=1.0)
    assert [(s.index, s.host_id) for s in plan.start] == [(1, "h3")]
    assert state.apply(host_job(1, host="h1"), now=2.0) is not None  # the host came back with it


def test_missing_from_ignores_pending_and_recent_jobs() -> None:
    state = state_with()
    state.apply(host_job(1), now=0.0)
    state.apply(host_job(2), now=5.0)
    state.add_pending(job_spec(formation(), "web", 3, job_id="p"), "h1", now=0.0)
    missing = state.missing_from("h1", listed=set(), listed_since=3.0)
    assert [j.id for j in missing] == ["job1"]


def test_one_off_jobs_are_tracked_for_load_only() -> None:
    state = state_with()
    spec = job_spec(formation(), "web", 1, job_id="run1").model_copy(update={"process_type": "", "dyno": ""})
    one_off = HostJob(spec=spec, host_id="h1", state="up", created_at=T0)
    change = state.apply(one_off, now=0.0)
    assert change is not None and not change.host_job.spec.process_type
    state.apply(one_off.model_copy(update={"state": "crashed"}), now=1.0)
    assert state.slots == {}

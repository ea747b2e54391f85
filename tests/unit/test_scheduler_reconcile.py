"""The scheduler's pure core: scaling, placement, dyno indices, deploys, restarts held for backoff."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from encom.scheduler.reconcile import FormationKey, JobView, Plan, RestartSlot, StartJob, reconcile

APP = "app1"
V1 = FormationKey(APP, "rel1", "web")
V2 = FormationKey(APP, "rel2", "web")
WORKER = FormationKey(APP, "rel1", "worker")
HOSTS = ["h1", "h2", "h3"]


def job(
    job_id: str, key: FormationKey = V1, host: str = "h1", state: str = "up", index: int = 1, created: float = 0
) -> JobView:
    return JobView(job_id, key, host, state, index, created or float(index))


def run(desired: dict[FormationKey, int], jobs: Iterable[JobView] = (), slots: Iterable[RestartSlot] = ()) -> Plan:
    return reconcile(desired, list(jobs), list(slots), HOSTS, now=100.0)


def dynos(starts: list[StartJob]) -> list[str]:
    return [f"{s.key.type}.{s.index}" for s in starts]


def test_nothing_to_do_when_counts_match() -> None:
    plan = run({V1: 2}, [job("a", index=1), job("b", index=2, host="h2")])
    assert plan.empty
    assert plan.wake_at is None


def test_scale_up_from_zero_assigns_sequential_dynos_spread_over_hosts() -> None:
    plan = run({V1: 3})
    assert dynos(plan.start) == ["web.1", "web.2", "web.3"]
    assert sorted(s.host_id for s in plan.start) == ["h1", "h2", "h3"]
    assert all(s.restart is None for s in plan.start) and not plan.stop


def test_scale_up_fills_the_lowest_free_index() -> None:
    plan = run({V1: 3}, [job("a", index=1), job("c", index=3, host="h3")])
    assert dynos(plan.start) == ["web.2"]
    assert plan.start[0].host_id == "h2"


def test_placement_prefers_fewest_of_the_type_then_fewest_overall() -> None:
    busy = [job(f"w{i}", key=WORKER, host="h1", index=i) for i in (1, 2, 3)]
    busy += [job("w4", key=WORKER, host="h2", index=4)]
    # h3 has no job at all: first; then h2 (1 job) before h1 (3 jobs), all with no web job yet.
    plan = run({V1: 3, WORKER: 4}, busy)
    assert [s.host_id for s in plan.start] == ["h3", "h2", "h1"]


def test_placement_spreads_a_type_even_over_a_loaded_host() -> None:
    existing = [job("a", host="h1", index=1), job("b", host="h2", index=2)]
    others = [job(f"w{i}", key=WORKER, host="h3", index=i) for i in (1, 2, 3, 4)]
    plan = run({V1: 3, WORKER: 4}, existing + others)
    assert [s.host_id for s in plan.start] == ["h3"]


def test_no_hosts_means_no_starts() -> None:
    plan = reconcile({V1: 2}, [], [], [], now=0.0)
    assert plan.start == []


def test_scale_down_stops_newest_first() -> None:
    jobs = [job("a", index=1, created=1), job("b", index=2, created=2), job("c", index=3, created=3)]
    assert run({V1: 1}, jobs).stop == ["c", "b"]


def test_scale_down_prefers_pending_and_starting_over_up() -> None:
    jobs = [
        job("old-starting", state="starting", index=1, created=1),
        job("up-new", state="up", index=2, created=9),
        job("pending", state="pending", index=3, created=2),
        job("up-old", state="up", index=4, created=3),
    ]
    assert run({V1: 1}, jobs).stop == ["pending", "old-starting", "up-new"]


def test_scale_down_drops_waiting_restarts_before_stopping_jobs() -> None:
    slot = RestartSlot(V1, 2, due=130.0)
    plan = run({V1: 1}, [job("a", index=1)], [slot])
    assert plan.drop == [slot]
    assert plan.stop == []


def test_scale_to_zero_stops_everything() -> None:
    plan = run({V1: 0}, [job("a", index=1), job("b", index=2)])
    assert sorted(plan.stop) == ["a", "b"]
    assert plan.start == []


def test_deploy_starts_new_release_and_stops_old_reusing_dyno_names() -> None:
    old = [job(f"old{i}", key=V1, host=HOSTS[i - 1], index=i) for i in (1, 2, 3)]
    plan = run({V1: 0, V2: 3}, old)
    assert sorted(plan.stop) == ["old1", "old2", "old3"]
    assert dynos(plan.start) == ["web.1", "web.2", "web.3"]
    assert {s.key for s in plan.start} == {V2}
    assert sorted(s.host_id for s in plan.start) == HOSTS


def test_each_release_numbers_its_own_dynos() -> None:
    # Both releases running (a deploy in progress): the new release's jobs are web.1, web.2 again, beside the
    # old web.1, web.2 that are about to drain, so a finished deploy leaves web.1..n.
    old = [job(f"old{i}", key=V1, index=i) for i in (1, 2)]
    plan = run({V1: 2, V2: 2}, old)
    assert dynos(plan.start) == ["web.1", "web.2"]
    assert {s.key for s in plan.start} == {V2}


def test_indices_are_per_type() -> None:
    plan = run({V1: 2, WORKER: 1}, [job("a", index=1)])
    assert sorted(dynos(plan.start)) == ["web.2", "worker.1"]


def test_one_off_jobs_are_never_touched() -> None:
    one_off = FormationKey(APP, "rel1", "")
    jobs = [job("run1", key=one_off, index=0), job("build", key=FormationKey(APP, "", ""), index=0)]
    plan = run({}, jobs)
    assert plan.empty
    plan = run({one_off: 3}, jobs)  # even a nonsensical count for type "" starts nothing
    assert plan.empty


def test_one_off_jobs_weigh_on_placement() -> None:
    one_off = FormationKey(APP, "rel1", "")
    plan = run({V1: 1}, [job("run1", key=one_off, host="h1", index=0), job("run2", key=one_off, host="h2", index=0)])
    assert [s.host_id for s in plan.start] == ["h3"]


def test_jobs_of_deleted_apps_are_stopped() -> None:
    gone = FormationKey("deleted-app", "relx", "web")
    plan = run({V1: 1}, [job("a", index=1), job("x1", key=gone, index=1), job("x2", key=gone, index=2)])
    assert sorted(plan.stop) == ["x1", "x2"]
    assert plan.start == []


def test_due_restart_starts_on_the_same_index() -> None:
    slot = RestartSlot(V1, 2, due=100.0)
    plan = run({V1: 3}, [job("a", index=1), job("c", index=3, host="h3")], [slot])
    assert [(s.index, s.restart) for s in plan.start] == [(2, slot)]
    assert plan.start[0].host_id == "h2"


def test_waiting_restart_holds_its_place_and_sets_a_wakeup() -> None:
    slot = RestartSlot(V1, 1, due=110.0)
    plan = run({V1: 2}, [job("b", index=2)], [slot])
    assert plan.start == [] and plan.stop == []
    assert plan.wake_at == 110.0


def test_restart_of_an_old_release_is_dropped_after_a_deploy() -> None:
    slot = RestartSlot(V1, 1, due=100.0)
    plan = run({V2: 1}, [], [slot])
    assert plan.drop == [slot]
    assert [(s.key, s.index) for s in plan.start] == [(V2, 1)]


def test_stopping_jobs_count_until_they_are_down() -> None:
    # A job stopping behind our back still holds its place; it is restarted once it is down.
    plan = run({V1: 2}, [job("a", index=1), job("b", index=2, state="stopping")])
    assert plan.empty


def test_large_scale_up_spreads_evenly() -> None:
    plan = run({V1: 9})
    assert Counter(s.host_id for s in plan.start) == {"h1": 3, "h2": 3, "h3": 3}
    assert dynos(plan.start) == [f"web.{i}" for i in range(1, 10)]

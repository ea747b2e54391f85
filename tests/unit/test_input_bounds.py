"""The input bounds of issue 11: every rule refuses what it must, with a message naming the rule."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pydantic
import pytest

from encom.api.errors import ValidationError
from encom.api.settings import Settings
from encom.api.types import (
    MAX_ENV_VALUE,
    MAX_RELEASE_ENV,
    MAX_ROUTE_PATH,
    AppCreate,
    Job,
    JobRun,
    KeyCreate,
    check_artifact_url,
    check_command,
    check_env,
    check_meta,
    check_process_counts,
    check_process_types,
    check_release_env,
    check_service,
    shown,
)
from encom.cli.jobs import state_text
from encom.cli.output import CliError
from encom.cli.scale import JobTracker, parse_counts
from encom.controller.routes import normalize_path
from encom.scheduler.reconcile import FormationKey, JobView, RestartSlot, reconcile
from encom.scheduler.specs import job_spec
from encom.scheduler.state import PLACE_RETRY_MAX, SchedulerState, place_retry_delay
from tests.unit.test_scheduler_state import formation, host_job


def refused(check: object, *args: object, match: str) -> None:
    assert callable(check)
    with pytest.raises(ValidationError, match=match) as info:
        check(*args)
    assert info.value.status == 400


# ---------------------------------------------------------------- env


@pytest.mark.parametrize("key", ["", "A=B", "A\0B", "A\n", "1ABC", "A-B", "A B", "Ä", "A\nB", "K" * 256])
def test_hostile_env_keys_are_refused(key: str) -> None:
    with pytest.raises(ValidationError, match="env key") as info:
        check_env({key: "v"})
    assert "\0" not in info.value.message and "\n" not in info.value.message  # quoted escaped


def test_ten_kilobyte_key_is_refused_with_its_length() -> None:
    refused(check_env, {"K" * 10_000: "v"}, match="longer than 255 characters")


@pytest.mark.parametrize("key", ["A", "_", "_A1", "DATABASE_URL", "a_b_C_9", "K" * 255])
def test_shell_variable_names_are_accepted(key: str) -> None:
    assert check_env({key: "value"}) == len(key) + 5


def test_values_up_to_32_kib_without_nul() -> None:
    check_env({"A": "x" * MAX_ENV_VALUE})
    refused(check_env, {"A": "x" * (MAX_ENV_VALUE + 1)}, match="at most 32768 bytes")
    refused(check_env, {"A": "é" * (MAX_ENV_VALUE // 2 + 1)}, match="at most 32768 bytes")  # UTF-8 bytes count
    refused(check_env, {"A": "a\0b"}, match="NUL")
    refused(check_env, {"A": "x" * (2 << 20)}, match="at most 32768 bytes")


def test_a_release_env_is_at_most_256_kib_with_its_process_envs() -> None:
    value = "x" * 30_000
    release_env = {f"R{i}": value for i in range(5)}
    process_envs = {"web": {f"W{i}": value for i in range(3)}}
    check_release_env(release_env, process_envs)  # 8 values: 240,000 bytes and keys
    process_envs["worker"] = {"W": value}
    refused(check_release_env, release_env, process_envs, match="at most 262144 bytes")
    assert MAX_RELEASE_ENV == 256 << 10


def test_process_env_keys_are_checked_and_named() -> None:
    refused(check_release_env, {}, {"web": {"A=B": "1"}}, match='web env: invalid env key "A=B"')


# ---------------------------------------------------------------- counts


def test_counts_above_the_cluster_limit_are_refused_naming_the_setting() -> None:
    check_process_counts({"web": 100, "worker": 0}, 100)
    refused(check_process_counts, {"web": 101}, 100, match="above the limit of 100 processes per type")
    refused(check_process_counts, {"web": 10**30}, 100, match="max_processes_per_type")
    refused(check_process_counts, {"web": -1}, 100, match="cannot be negative")


def test_a_huge_count_is_not_printed_in_full() -> None:
    with pytest.raises(ValidationError) as info:
        check_process_counts({"web": 10**4000}, 100)
    assert "4001 digits" in info.value.message and len(info.value.message) < 300


def test_default_limits_are_cluster_settings() -> None:
    settings = Settings(data_dir="/nonexistent")  # type: ignore[arg-type]
    assert settings.max_processes_per_type == 100
    assert settings.max_push_bytes == 1 << 30
    with pytest.raises(pydantic.ValidationError):
        Settings(data_dir="/nonexistent", max_processes_per_type=0)  # type: ignore[arg-type]


def test_cli_counts_parse_up_to_what_the_cluster_can_refuse() -> None:
    assert parse_counts(["web=1000000000000000000000000000000"]) == {"web": 10**30}
    with pytest.raises(CliError):
        parse_counts(["web=" + "9" * 5000])
    with pytest.raises(CliError):
        parse_counts(["web=١٢"])  # non-ASCII digits


# ---------------------------------------------------------------- processes, meta, commands


def test_app_names_end_where_they_seem_to() -> None:
    with pytest.raises(pydantic.ValidationError):
        AppCreate(name="shop\n")


def test_process_types_are_bounded() -> None:
    check_process_types(["web", "worker-2"])
    refused(check_process_types, ["web\n"], match="invalid process type names")
    refused(check_process_types, ["Web"], match="invalid process type names")
    refused(check_process_types, ["w" * 64], match="at most 63 characters")
    refused(check_process_types, [f"t{i}" for i in range(51)], match="at most 50 process types")


def test_commands_are_bounded() -> None:
    check_command("gunicorn app:app", "web")
    refused(check_command, "x" * (32 << 10 + 1), "web", match="web: the command is")
    refused(check_command, "a\0b", "web", match="NUL")


def test_meta_is_bounded() -> None:
    check_meta({"git.commit": "abc", "strategy": None})
    refused(check_meta, {"a\nb": "1"}, match="invalid key")
    refused(check_meta, {"k": "v" * 1025}, match="longer than 1024 characters")
    refused(check_meta, {f"k{i}": "v" for i in range(101)}, match="at most 100 keys")


def test_run_arguments_are_bounded() -> None:
    JobRun(args=["echo", "hi"])
    with pytest.raises(pydantic.ValidationError, match="at most 65536 bytes"):
        JobRun(args=["x" * (64 << 10)])
    with pytest.raises(pydantic.ValidationError, match="NUL"):
        JobRun(args=["a\0b"])


def test_key_lines_are_bounded() -> None:
    with pytest.raises(pydantic.ValidationError):
        KeyCreate(key="ssh-ed25519 " + "A" * (16 << 10))


def test_job_reports_are_bounded() -> None:
    now = datetime.now(UTC)
    base = {"id": "j", "app_id": "a", "release_id": "r", "type": "web", "state": "up"}
    with pytest.raises(pydantic.ValidationError):
        Job.model_validate(base | {"port": 10**30, "created_at": now, "updated_at": now})
    with pytest.raises(pydantic.ValidationError):
        Job.model_validate(base | {"restarts": -1, "created_at": now, "updated_at": now})


# ---------------------------------------------------------------- routes and artifacts


@pytest.mark.parametrize("service", ["", " ", "a\nb", "evil\n", "a#b", "../etc", "A-web", "-web", "a" * 129, "a b"])
def test_hostile_route_services_are_refused(service: str) -> None:
    refused(check_service, service, match="invalid route service")


@pytest.mark.parametrize("service", ["example-web", "example-admin-web", "db", "a" * 128])
def test_route_services_like_app_names_are_accepted(service: str) -> None:
    assert check_service(service) == service


def test_route_paths_are_at_most_2_kib() -> None:
    assert normalize_path("/" + "a" * (MAX_ROUTE_PATH - 2)).startswith("/a")
    refused(normalize_path, "/" + "a" * MAX_ROUTE_PATH, match="at most 2048 characters")
    refused(normalize_path, "/a\nb", match="invalid route path")


@pytest.mark.parametrize(
    "url", ["", "slugs/a.tgz", "/slugs/../x.tgz", "/slugs/.hidden", "/slugs//a.tgz", "http://evil/x", "/a b", "/"]
)
def test_bad_artifact_urls_are_refused(url: str) -> None:
    refused(check_artifact_url, url, match="artifact URL")


def test_blobstore_paths_are_artifact_urls() -> None:
    assert check_artifact_url("/slugs/0f2c/1a2b.tgz") == "/slugs/0f2c/1a2b.tgz"
    refused(check_artifact_url, "/" + "a" * 1024, match="longer than 1024")


def test_refused_values_are_quoted_escaped_and_short() -> None:
    assert shown("a\nb\0") == '"a\\nb\\x00"'
    assert len(shown("x" * 10_000)) < 80


# ---------------------------------------------------------------- scheduling


def test_reconcile_is_linear_in_the_count() -> None:
    """100 starts, or starts next to many existing jobs, take no time (the lowest free index was quadratic)."""
    key = FormationKey("app", "rel", "web")
    jobs = [JobView(f"j{i}", key, "h1", "up", i, float(i)) for i in range(1, 5001)]
    started = time.monotonic()
    plan = reconcile({key: 10_000}, jobs, [], ["h1", "h2"], 0.0)
    assert time.monotonic() - started < 1.0
    assert len(plan.start) == 5000
    assert sorted(s.index for s in plan.start) == list(range(5001, 10_001))


def test_counts_stored_before_the_limit_are_capped_by_the_scheduler() -> None:
    state = SchedulerState(max_count=100)
    state.set_formation(formation(web=10**30))
    assert list(state.desired().values()) == [100]


def test_a_job_no_host_takes_waits_pending_with_its_reason_and_backs_off() -> None:
    state = SchedulerState()
    state.set_formation(formation(web=1))
    pending = state.add_pending(job_spec(formation(web=1), "web", 1, job_id="j1"), "h1", now=0.0)
    assert state.defer("j1", "no free job port", now=0.0) is pending
    assert pending.waiting == "no free job port" and pending.state == "pending"
    assert [v.id for v in state.views()[0]] == ["j1"]  # it keeps its place: no second job is started
    assert state.due_for_placement(0.5) == [] and state.placement_wake() == 1.0
    assert state.due_for_placement(1.0) == [pending]
    state.defer("j1", "no free job port", now=1.0)
    assert state.placement_wake() == 3.0  # 2 s after the second refusal
    state.apply(host_job(1, "starting", job_id="j1"), now=3.0)  # a host took it at last
    assert pending.waiting is None and state.placement_wake() is None
    assert state.defer("j1", "late refusal", now=4.0) is None  # a job a host has is never deferred


def test_a_waiting_job_scaled_down_is_forgotten() -> None:
    state = SchedulerState()
    state.add_pending(job_spec(formation(web=1), "web", 1, job_id="j1"), "h1", now=0.0)
    state.defer("j1", "no room", now=0.0)
    assert state.drop_waiting("j1", now=1.0) is not None
    assert state.jobs == {} and "j1" in state.ended


def test_with_no_host_new_dynos_are_unplaced_and_restarts_keep_their_slots() -> None:
    key = FormationKey("app", "rel", "web")
    slot = RestartSlot(key, 1, due=0.0)
    plan = reconcile({key: 3}, [], [slot], [], 0.0)
    assert plan.start == [] and plan.unplaced == [(key, 2), (key, 3)]


def test_a_new_host_brings_waiting_jobs_forward() -> None:
    state = SchedulerState()
    state.add_pending(job_spec(formation(web=1), "web", 1, job_id="j1"), "", now=0.0)
    for _ in range(8):
        state.defer("j1", "no host is available", now=0.0)
    assert state.placement_wake() == PLACE_RETRY_MAX
    state.offer_soon(1.0)
    assert state.placement_wake() == 1.0


def test_placement_backoff_grows_to_30_seconds() -> None:
    assert [place_retry_delay(n) for n in (1, 2, 3, 4, 5, 6, 7)] == [1, 2, 4, 8, 16, 30, 30]
    assert place_retry_delay(10**6) == PLACE_RETRY_MAX


# ---------------------------------------------------------------- what users see


def job(state: str, **fields: object) -> Job:
    now = datetime.now(UTC)
    base: dict[str, object] = {"id": "j1", "app_id": "a", "release_id": "r1", "type": "web", "state": state}
    return Job.model_validate(base | {"created_at": now, "updated_at": now} | fields)


def test_ps_shows_why_a_job_is_pending() -> None:
    reason = "waiting for a host: host h1: no free job port in 55000-55999"
    assert state_text(job("pending", error=reason)) == f"pending ({reason})"
    assert state_text(job("pending")) == "pending"


def test_scale_timeout_names_the_pending_reason() -> None:
    tracker = JobTracker("r1", targets={"web": 2}, growing={"web"})
    tracker.apply(job("up", id="j1"))
    tracker.apply(job("pending", id="j2", error="waiting for a host: host h1: no free job port in 1-2"))
    assert tracker.missing() == "web=2 (1 up, 1 pending: waiting for a host: host h1: no free job port in 1-2)"

"""Job specs the scheduler sends to hosts, and the job records it sends to the controller."""

from __future__ import annotations

from datetime import UTC, datetime

from encom.api.jobspec import job_env, one_off_spec
from encom.api.types import (
    App,
    Artifact,
    ExpandedFormation,
    HealthCheck,
    HostJob,
    ProcessType,
    Release,
    Resources,
)
from encom.scheduler.specs import controller_job, dyno_name, job_spec, parse_dyno

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def formation(processes: dict[str, ProcessType], env: dict[str, str] | None = None) -> ExpandedFormation:
    app = App(id="app-id", name="shop", created_at=T0, updated_at=T0)
    release = Release(
        id="rel-id",
        app_id=app.id,
        artifact_id="art-id",
        env=env or {},
        processes=processes,
        version=2,
        created_at=T0,
    )
    artifact = Artifact(id="art-id", url="/slugs/app-id/slug.tgz", created_at=T0)
    return ExpandedFormation(
        app=app, release=release, artifact=artifact, processes=dict.fromkeys(processes, 1), updated_at=T0
    )


def test_env_order_later_wins() -> None:
    f = formation(
        {"web": ProcessType(cmd="serve", env={"B": "process", "DYNO": "custom"})},
        env={"A": "release", "B": "release", "ENCOM_APP_NAME": "renamed"},
    )
    env = job_env(f.app, f.release, "web", "web.2", "job-id")
    assert list(env)[:6] == [
        "DYNO",
        "ENCOM_APP_ID",
        "ENCOM_APP_NAME",
        "ENCOM_RELEASE_ID",
        "ENCOM_PROCESS_TYPE",
        "ENCOM_JOB_ID",
    ]
    assert env["A"] == "release"
    assert env["B"] == "process"  # process env beats release env
    assert env["ENCOM_APP_NAME"] == "renamed"  # release env beats encom's own
    assert env["DYNO"] == "custom"
    assert env["ENCOM_APP_ID"] == "app-id"
    assert env["ENCOM_RELEASE_ID"] == "rel-id"
    assert env["ENCOM_PROCESS_TYPE"] == "web"
    assert env["ENCOM_JOB_ID"] == "job-id"
    assert "PORT" not in env  # the host adds it


def test_web_spec_has_a_service_and_a_health_check() -> None:
    resources = Resources(memory=256 << 20)
    f = formation({"web": ProcessType(cmd="python3 -m http.server $PORT", resources=resources)})
    spec = job_spec(f, "web", 3, job_id="j1")
    assert spec.id == "j1"
    assert (spec.app_id, spec.app_name, spec.release_id) == ("app-id", "shop", "rel-id")
    assert spec.process_type == "web"
    assert spec.dyno == "web.3"
    assert spec.env["DYNO"] == "web.3"
    assert spec.artifact_url == "/slugs/app-id/slug.tgz"
    assert spec.cmd == "python3 -m http.server $PORT"
    assert spec.port is True
    assert spec.service == "shop-web"
    assert spec.check == HealthCheck()
    assert spec.resources == resources


def test_declared_check_and_stop_grace_reach_the_spec() -> None:
    check = HealthCheck(type="http", path="/health", status=204, start_timeout=20)
    f = formation({"web": ProcessType(cmd="serve", check=check)})
    f = f.model_copy(update={"app": f.app.model_copy(update={"meta": {"stop_grace": "7.5"}})})
    spec = job_spec(f, "web", 1)
    assert spec.check == check
    assert spec.stop_grace == 7.5
    assert job_spec(formation({"web": ProcessType(cmd="serve")}), "web", 1).stop_grace == 30.0


def test_one_off_spec_runs_the_type_once_outside_any_formation() -> None:
    f = formation({"web": ProcessType(cmd="serve"), "release": ProcessType(cmd="migrate", env={"X": "1"})})
    spec = one_off_spec(f.app, f.release, f.artifact, "release", "release.1", job_id="r1")
    assert (spec.id, spec.process_type, spec.dyno, spec.cmd) == ("r1", "", "release.1", "migrate")
    assert spec.service is None and spec.check is None
    assert spec.env["DYNO"] == "release.1" and spec.env["X"] == "1"
    assert spec.artifact_url == "/slugs/app-id/slug.tgz"


def test_dash_web_types_are_web_too() -> None:
    spec = job_spec(formation({"admin-web": ProcessType(cmd="serve")}), "admin-web", 1)
    assert spec.service == "shop-admin-web"
    assert spec.check is not None


def test_worker_spec_has_no_service_and_no_check() -> None:
    spec = job_spec(formation({"worker": ProcessType(cmd="work")}), "worker", 1)
    assert spec.service is None
    assert spec.check is None
    assert spec.port is True
    assert spec.dyno == "worker.1"


def test_each_spec_gets_a_fresh_hex_id() -> None:
    f = formation({"web": ProcessType(cmd="serve")})
    a, b = job_spec(f, "web", 1), job_spec(f, "web", 1)
    assert a.id != b.id
    assert len(a.id) == 32 and int(a.id, 16) >= 0
    assert a.env["ENCOM_JOB_ID"] == a.id


def test_release_without_artifact_runs_with_an_empty_app_dir() -> None:
    f = formation({"web": ProcessType(cmd="serve")}).model_copy(update={"artifact": None})
    assert job_spec(f, "web", 1).artifact_url is None


def test_dyno_names_round_trip() -> None:
    assert dyno_name("web", 12) == "web.12"
    assert parse_dyno("web.12") == 12
    assert parse_dyno("admin-web.3") == 3
    assert parse_dyno("") is None
    assert parse_dyno("web") is None
    assert parse_dyno("web.0") is None
    assert parse_dyno("web.x") is None


def test_controller_job_maps_host_job() -> None:
    spec = job_spec(formation({"web": ProcessType(cmd="serve")}), "web", 1, job_id="j1")
    host_job = HostJob(spec=spec, host_id="h1", state="crashed", port=55001, exit_status=3, error="boom", created_at=T0)
    job = controller_job(host_job, restarts=4, updated_at=T0)
    assert job.model_dump() == {
        "id": "j1",
        "app_id": "app-id",
        "release_id": "rel-id",
        "type": "web",
        "host_id": "h1",
        "state": "crashed",
        "port": 55001,
        "exit_status": 3,
        "error": "boom",
        "restarts": 4,
        "created_at": T0,
        "updated_at": T0,
    }

"""Deploys users can trust, as a user sees them: redeploys under steady load lose no request, a crashing
release is rolled back by itself, the release phase runs once before the new code takes traffic.

Tests run in file order and build on each other (one app on the session's cluster, its own user).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, SteadyLoad, User, assert_no_failures, cluster_user, curl, steady_load_on

pytestmark = pytest.mark.e2e

APP = "deploys"
HOST = f"{APP}.encom.localhost"  # the default route
PROCFILE = "web: echo web-start $ENCOM_RELEASE_ID; exec gunicorn --bind 0.0.0.0:$PORT --workers 2 app:app\n"


def answers(cluster: Cluster, n: int = 20) -> set[str]:
    """The `version=… greeting=…` part of n answers."""
    seen = set()
    for _ in range(n):
        code, body = curl(cluster.router_port, HOST)
        assert code == 200, f"HTTP {code}: {body}"
        match = re.search(r"(version=\S+) .*(greeting=\S+)", body)
        assert match, body
        seen.add(f"{match.group(1)} {match.group(2)}")
    return seen


def set_version(repo: Path, version: str) -> None:
    app = repo / "app.py"
    text = re.sub(r'VERSION = ".*"\n', "", app.read_text())
    text = text.replace('f"Hello from example: ', 'f"Hello from example: version={VERSION} ')
    app.write_text(text.replace("app = Flask(__name__)\n", f'app = Flask(__name__)\nVERSION = "{version}"\n'))


def commit(user: User, repo: Path, message: str) -> None:
    user.ok("git", "add", "-A", cwd=repo)
    user.ok("git", "commit", "-qm", message, cwd=repo)


def push(user: User, repo: Path) -> str:
    return user.ok("git", "push", "encom", "master", cwd=repo, timeout=300).err


def current_row(listing: str) -> list[str]:
    """Version and id of the release `encom release` marks current."""
    rows = [line.split()[1:3] for line in listing.splitlines() if line.startswith("*")]
    assert len(rows) == 1, listing
    return rows[0]


def release_id(user: User, repo: Path, ref: str | None = None) -> str:
    shown = user.encom("release", "show", "--json", *([ref] if ref else []), cwd=repo).out
    found = re.search(r'"id": "([0-9a-f-]{36})"', shown)
    assert found, shown
    return found.group(1)


@pytest.fixture(scope="module")
def deployer(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> User:
    return cluster_user(cluster, tmp_path_factory.mktemp("deploys-home"))


@pytest.fixture(scope="module")
def repo(deployer: User) -> Path:
    repo = deployer.app_repo("python-web", APP)
    (repo / "Procfile").write_text(PROCFILE)
    (repo / "app.json").write_text('{"healthchecks": {"web": [{"type": "startup", "path": "/", "attempts": 10}]}}\n')
    set_version(repo, "v1")
    commit(deployer, repo, "v1 with a health check")
    deployer.encom("create", APP, cwd=repo)
    return repo


def test_first_push_then_three_web_jobs(deployer: User, repo: Path, cluster: Cluster) -> None:
    out = push(deployer, repo)
    assert "=====> Application deployed" in out, out
    deployer.encom("scale", "web=3", cwd=repo)
    assert answers(cluster) == {"version=v1 greeting=none"}
    release = deployer.encom("release", "show", "--json", cwd=repo).out
    assert '"type": "http"' in release, release  # app.json's check is part of the release


def test_push_under_load_loses_no_request(deployer: User, repo: Path, cluster: Cluster) -> None:
    set_version(repo, "v2")
    commit(deployer, repo, "v2")
    with steady_load(cluster) as load:
        out = push(deployer, repo)
    assert_no_failures(load, "git push")
    assert len(re.findall(r"-----> web job \S+ up", out)) == 3, out
    assert answers(cluster) == {"version=v2 greeting=none"}
    deployments = deployer.encom("deployment", cwd=repo).out.splitlines()
    assert "complete" in deployments[1], deployments


def test_env_set_under_load_loses_no_request(deployer: User, repo: Path, cluster: Cluster) -> None:
    with steady_load(cluster) as load:
        deployer.encom("env", "set", "GREETING=hi", cwd=repo)
    assert_no_failures(load, "env set")
    assert answers(cluster) == {"version=v2 greeting=hi"}


def test_rollback_under_load_loses_no_request(deployer: User, repo: Path, cluster: Cluster) -> None:
    with steady_load(cluster) as load:
        out = deployer.encom("release", "rollback", "-y", cwd=repo).out
    assert "Rolled back to" in out
    assert_no_failures(load, "release rollback")
    assert answers(cluster) == {"version=v2 greeting=none"}


def test_a_crashing_release_is_rolled_back(deployer: User, repo: Path, cluster: Cluster) -> None:
    (repo / "Procfile").write_text("web: echo crashing on purpose; exit 3\n")
    commit(deployer, repo, "v3 crashes at start")
    before = deployer.encom("release", cwd=repo).out
    with steady_load(cluster) as load:
        failed = deployer.fails("git", "push", "encom", "master", cwd=repo, timeout=300)
    assert_no_failures(load, "a failed deploy")
    assert "Deploy failed: web job" in failed.err and "crashed: exited with status 3" in failed.err, failed.err
    assert "crashing on purpose" in failed.err  # the job's own output says why
    assert re.search(r"Rolled back: v\d+ is still serving", failed.err), failed.err
    assert "Application deployed" not in failed.err
    assert answers(cluster) == {"version=v2 greeting=none"}
    assert current_row(before) == current_row(deployer.encom("release", cwd=repo).out)  # still the current one
    assert "failed" in deployer.encom("deployment", cwd=repo).out.splitlines()[1]
    (repo / "Procfile").write_text(PROCFILE)
    commit(deployer, repo, "back to a working web")


def test_failing_release_phase_stops_the_deploy(deployer: User, repo: Path, cluster: Cluster) -> None:
    (repo / "Procfile").write_text(PROCFILE + "release: echo release-phase-fails; exit 4\n")
    set_version(repo, "v4")
    commit(deployer, repo, "v4 with a failing release command")
    with steady_load(cluster) as load:
        failed = deployer.fails("git", "push", "encom", "master", cwd=repo, timeout=300)
    assert_no_failures(load, "a failed release phase")
    assert "Running release command..." in failed.err
    assert "the release command failed (exit status 4)" in failed.err, failed.err
    assert "release-phase-fails" in failed.err
    assert answers(cluster) == {"version=v2 greeting=none"}
    newest = re.search(r"^\s*(v\d+)", deployer.encom("release", cwd=repo).out, re.M)
    assert newest, "no release listed"
    failed_id = release_id(deployer, repo, newest.group(1))
    assert f"web-start {failed_id}" not in deployer.encom("log", "-n", "2000", cwd=repo).out  # no job of it started


def test_release_phase_runs_once_before_traffic(deployer: User, repo: Path, cluster: Cluster) -> None:
    (repo / "Procfile").write_text(PROCFILE + "release: echo release-phase-ran $ENCOM_RELEASE_ID\n")
    set_version(repo, "v5")
    commit(deployer, repo, "v5 with a release command")
    with steady_load(cluster) as load:
        out = push(deployer, repo)
    assert_no_failures(load, "a deploy with a release phase")
    assert "=====> Application deployed" in out and "release-phase-ran" in out, out
    assert answers(cluster) == {"version=v5 greeting=none"}
    current = release_id(deployer, repo)
    log = deployer.encom("log", "-n", "2000", cwd=repo).out.splitlines()
    ran = [line for line in log if f"release-phase-ran {current}" in line]
    started = [line for line in log if f"web-start {current}" in line]
    assert len(ran) == 1, ran
    assert len(started) == 3, started
    assert ran[0].split()[0] < min(line.split()[0] for line in started)  # RFC 3339 UTC times sort as text


def failed_push(user: User, repo: Path, cluster: Cluster, change: str, app_json: str) -> str:
    """Push a commit with this app.json; the push must fail, the current release keep serving, the commit go."""
    before = user.encom("release", cwd=repo).out
    (repo / "app.json").write_text(app_json)
    commit(user, repo, change)
    try:
        with steady_load(cluster) as load:
            failed = user.fails("git", "push", "encom", "master", cwd=repo, timeout=300)
        assert_no_failures(load, change)
        assert "Application deployed" not in failed.err
        assert current_row(before) == current_row(user.encom("release", cwd=repo).out)
        assert answers(cluster) == {"version=v5 greeting=none"}
        return failed.err
    finally:
        user.ok("git", "reset", "-q", "--hard", "HEAD~1", cwd=repo)


def test_bad_app_json_is_refused(deployer: User, repo: Path, cluster: Cluster) -> None:
    out = failed_push(deployer, repo, cluster, "broken app.json", '{"healthchecks": {"web": [{"path": "/"}]}\n')
    assert "app.json is not valid JSON" in out, out
    out = failed_push(deployer, repo, cluster, "unknown type", '{"healthchecks": {"wbe": [{"path": "/"}]}}\n')
    assert 'app.json: healthchecks names unknown process type "wbe"' in out, out


def test_a_health_check_that_never_passes_is_rolled_back(deployer: User, repo: Path, cluster: Cluster) -> None:
    never = '{"healthchecks": {"web": [{"path": "/missing", "attempts": 2, "timeout": 1, "wait": 1}]}}\n'
    out = failed_push(deployer, repo, cluster, "a check that never passes", never)
    assert "Deploy failed: web job" in out and "health check (http" in out, out
    assert "HTTP 404 from /missing, expected 200" in out, out


@contextmanager
def steady_load(cluster: Cluster) -> Iterator[SteadyLoad]:
    with steady_load_on(cluster, HOST) as load:
        yield load

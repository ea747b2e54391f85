"""One-off jobs and kill, as a user types them: `encom run`, `run -d`, `encom kill`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, User, make_user, wait_for

pytestmark = pytest.mark.e2e

APP = "runner"


@pytest.fixture(scope="module")
def owner(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> User:
    user = make_user(tmp_path_factory.mktemp("runner-home"))
    user.encom(*cluster.add_line.split()[1:])
    user.encom("key", "add")
    return user


@pytest.fixture(scope="module")
def repo(owner: User) -> Path:
    repo = owner.app_repo("python-web", APP)
    owner.encom("create", APP, cwd=repo)
    return repo


def test_run_before_the_first_push(owner: User, repo: Path) -> None:
    failed = owner.fails("encom", "run", "echo", "foo", cwd=repo)
    assert "App has no release, push first" in failed.err
    owner.ok("git", "push", "encom", "master", cwd=repo, timeout=300)


def test_run_prints_the_output_and_exits_with_the_status(owner: User, repo: Path) -> None:
    assert owner.encom("run", "echo", "foo", cwd=repo).out == "foo\n"
    status = owner.run("encom", "run", "-a", APP, "sh", "-c", "echo to-err >&2; exit 42", cwd=repo)
    assert (status.code, status.err) == (42, "to-err\n")
    owner.encom("env", "set", "GREETING=from-env", cwd=repo)
    assert owner.encom("run", "sh", "-c", "echo $GREETING $DYNO", cwd=repo).out.startswith("from-env run.")
    assert owner.encom("run", "python", "-c", "import flask; print('slug')", cwd=repo).out == "slug\n"


def test_run_detached_goes_to_the_log(owner: User, repo: Path) -> None:
    out = owner.encom("run", "-d", "sh", "-c", "echo detached-output", cwd=repo).out
    job = re.search(r"as job (\S+);", out)
    assert job, out
    wait_for("the detached job's output in the log", lambda: "detached-output" in owner.encom("log", cwd=repo).out)
    wait_for("the one-off job to end", lambda: "down" in owner.encom("ps", "--all", cwd=repo).out)
    listed = [line for line in owner.encom("ps", "--all", cwd=repo).out.splitlines() if job.group(1) in line]
    assert listed and " run " in listed[0] and "down" in listed[0], listed


def test_kill_replaces_a_formation_job(owner: User, repo: Path) -> None:
    def web_up() -> list[str]:
        return [
            line.split()[0]
            for line in owner.encom("ps", cwd=repo).out.splitlines()
            if " web " in line and " up " in line
        ]

    wait_for("a web job up", lambda: len(web_up()) == 1)
    [victim] = web_up()
    assert owner.encom("kill", victim[:8], cwd=repo).out == f"Job {victim} killed.\n"
    wait_for("a replacement web job", lambda: len(web_up()) == 1 and web_up()[0] != victim)
    assert "no job" in owner.fails("encom", "kill", "nosuchjob", cwd=repo).err
    assert "is not running" in owner.fails("encom", "kill", victim, cwd=repo).err

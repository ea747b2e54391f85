"""Every change takes effect without dropping a connection: 20 route changes and 20 scale changes under a
steady load through the router lose no request."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, User, assert_no_failures, cluster_user, curl, steady_load_on, wait_for

pytestmark = pytest.mark.e2e

APP = "steady"
HOST = f"{APP}.encom.localhost"
CHANGES = 20


@pytest.fixture(scope="module")
def owner(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> User:
    return cluster_user(cluster, tmp_path_factory.mktemp("steady-home"))


@pytest.fixture(scope="module")
def repo(owner: User, cluster: Cluster) -> Path:
    repo = owner.app_repo("python-web", APP)
    owner.encom("create", APP, cwd=repo)
    owner.ok("git", "push", "encom", "master", cwd=repo, timeout=300)
    owner.encom("scale", "web=2", cwd=repo)
    assert curl(cluster.router_port, HOST)[0] == 200
    return repo


def test_route_changes_under_load_lose_no_request(owner: User, repo: Path, cluster: Cluster) -> None:
    with steady_load_on(cluster, HOST) as load:
        for n in range(CHANGES):
            added = owner.encom("route", "add", "http", f"r{n}.{APP}.localhost", cwd=repo).out
            ref = re.search(r"http/\S+", added)
            assert ref, added
            if n % 2:  # half of them stay: every other change adds a backend map entry, the rest remove one
                owner.encom("route", "remove", ref.group(0), cwd=repo)
    assert_no_failures(load, f"{CHANGES} route changes")
    assert curl(cluster.router_port, f"r0.{APP}.localhost")[0] == 200
    assert curl(cluster.router_port, f"r1.{APP}.localhost")[0] == 404


def test_scale_changes_under_load_lose_no_request(owner: User, repo: Path, cluster: Cluster) -> None:
    with steady_load_on(cluster, HOST) as load:
        for n in range(CHANGES):
            owner.encom("scale", f"web={3 if n % 2 == 0 else 2}", cwd=repo)
    assert_no_failures(load, f"{CHANGES} scale changes")
    assert len(re.findall(r"\bup\b", owner.encom("ps", cwd=repo).out)) == 2


def test_router_access_lines_reach_the_app_log(owner: User, repo: Path, cluster: Cluster) -> None:
    def logged() -> bool:
        log = owner.encom("log", "-n", "300", cwd=repo).out
        return (
            re.search(r'router\[web\.\d+\]: method=GET path="/" status=200 service=\d+ms bytes=\d+ request_id=\S+', log)
            is not None
        )

    for _ in range(3):
        assert curl(cluster.router_port, HOST)[0] == 200
    wait_for("router lines in `encom log`", logged, timeout=10)

"""A whole cluster (as `make up` starts it): push the python-web example, `encom limit set`, and check that the
new release's job runs inside those limits (its memory and pids cgroups and its open-files rlimit on this host)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, User, curl, make_user, running_cluster, wait_for

pytestmark = pytest.mark.integration

PORT_BASE = 10000  # below the ephemeral range (32768+), where an outgoing connection could hold a role port
CGROUP_DIRS = (Path("/sys/fs/cgroup/memory/encom"), Path("/sys/fs/cgroup/encom"))  # v1, v2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("encom-state"), PORT_BASE) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def user(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> User:
    u = make_user(tmp_path_factory.mktemp("home"))
    u.encom(*cluster.add_line.split()[1:])
    u.encom("key", "add")
    return u


def web_jobs(user: User, repo: Path, release: str) -> list[str]:
    """Ids of the `up` web jobs of one release (`encom ps`: ID TYPE STATE PORT RELEASE CREATED)."""
    rows = [line.split() for line in user.encom("ps", cwd=repo).out.splitlines()[1:]]
    return [row[0] for row in rows if row[1:3] == ["web", "up"] and release in row]


def cgroup_dir(job_id: str) -> Path:
    for base in CGROUP_DIRS:
        if (base / job_id).is_dir():
            return base / job_id
    raise AssertionError(f"no cgroup for job {job_id} under {', '.join(map(str, CGROUP_DIRS))}")


def memory_limit(job_id: str) -> int:
    path = cgroup_dir(job_id)
    v1 = path / "memory.limit_in_bytes"
    return int((v1 if v1.exists() else path / "memory.max").read_text())


def pids_limit(job_id: str) -> int:
    v1 = Path("/sys/fs/cgroup/pids/encom") / job_id / "pids.max"
    return int((v1 if v1.exists() else cgroup_dir(job_id) / "pids.max").read_text())


def open_files_limits(job_id: str) -> set[str]:
    """`soft hard` of `Max open files` for every process in the job's cgroup."""
    found = set()
    for pid in (cgroup_dir(job_id) / "cgroup.procs").read_text().split():
        limits = Path(f"/proc/{pid}/limits").read_text()
        match = re.search(r"^Max open files\s+(\d+)\s+(\d+)", limits, re.M)
        assert match, limits
        found.add(f"{match.group(1)} {match.group(2)}")
    return found


def test_limits_reach_the_job(cluster: Cluster, user: User) -> None:
    repo = user.app_repo("python-web", "limited")
    user.encom("create", "limited", cwd=repo)
    user.ok("git", "push", "encom", "master", cwd=repo, timeout=300)
    wait_for("the app to answer", lambda: curl(cluster.router_port, "limited.encom.localhost")[0] == 200, 120)
    first = web_jobs(user, repo, "v1")
    assert len(first) == 1
    assert memory_limit(first[0]) == 1 << 30
    assert pids_limit(first[0]) == 512

    changed = user.encom("limit", "set", "web", "memory=256MB", "max_fd=4096", "max_procs=300", cwd=repo)
    assert changed.out == "Created release v2.\n"
    assert "web: cpu=1000 max_fd=4096 max_procs=300 memory=256MB" in user.encom("limit", cwd=repo).out
    wait_for("a v2 web job", lambda: len(web_jobs(user, repo, "v2")) == 1, 120)
    job = web_jobs(user, repo, "v2")[0]
    assert memory_limit(job) == 268435456
    assert pids_limit(job) == 300
    assert open_files_limits(job) == {"4096 4096"}
    wait_for("the app to answer again", lambda: curl(cluster.router_port, "limited.encom.localhost")[0] == 200, 60)

    refused = user.fails("encom", "limit", "set", "web", "memory=1MB", cwd=repo)
    assert refused.err == "error: web: memory 1MB is below the minimum of 4MB\n"

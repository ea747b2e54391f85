"""Attacks made the way an app makes them, on one real cluster (as `make up` starts it).

Every test here is an attack from an app's build, from `encom run`, or through the API, and checks both that
the attack fails and that another app (`victim`) keeps serving with no failed request meanwhile
(`victim_serves`). The cluster, its user and the victim are shared by the whole directory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    Cluster,
    User,
    assert_no_failures,
    cluster_user,
    curl,
    running_cluster,
    steady_load_on,
    wait_for,
)

# Role ports base+11..base+443, TCP routes base+1000.., job ports base+2000..base+2999; below the ephemeral range.
# The tests of this directory run after tests/integration, whose ranges these overlap (never at the same time).
PORT_BASE = int(os.environ.get("ENCOM_SECURITY_PORT_BASE", "25000"))
VICTIM = "victim"


@dataclass
class Victim:
    """An innocent app on the same cluster, deployed from examples/python-web."""

    name: str
    repo: Path
    host: str


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("encom-security"), PORT_BASE) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def user(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> User:
    return cluster_user(cluster, tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="session")
def victim(cluster: Cluster, user: User) -> Victim:
    repo = user.app_repo("python-web", VICTIM)
    user.encom("create", VICTIM, cwd=repo)
    user.ok("git", "push", "encom", "master", cwd=repo, timeout=300)
    host = f"{VICTIM}.encom.localhost"
    wait_for("the victim to answer", lambda: curl(cluster.router_port, host)[0] == 200)
    return Victim(VICTIM, repo, host)


@contextlib.contextmanager
def victim_serves(cluster: Cluster, victim: Victim, what: str) -> Iterator[None]:
    """The block is an attack: the victim must answer every request made meanwhile."""
    with steady_load_on(cluster, victim.host) as load:
        yield
    assert_no_failures(load, what)


def attacker_repo(user: User, name: str, files: dict[str, str]) -> Path:
    """A git repo of an attacking app (one commit of `files`), created on the cluster as `name`."""
    repo = user.home / name
    repo.mkdir()
    for path, text in files.items():
        target = repo / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        if path.startswith("bin/"):
            target.chmod(0o755)
    user._commit_all(repo, "attack")
    user.encom("create", name, cwd=repo)
    return repo

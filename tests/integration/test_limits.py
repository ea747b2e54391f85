"""`encom limit` through the real CLI against the real controller role (HTTPS on a loopback port in 29000-29999).

The controller, CLI runner and push helpers are the ones of test_cli.py; only the port range differs.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from encom.api.types import Release
from encom.controller.client import ControllerClient
from tests.integration.test_cli import Cluster, add_cluster, controller_cluster, fails, ok, push_release

pytestmark = pytest.mark.integration

DEFAULT_LINE = "cpu=1000 max_fd={fd} max_procs=512 memory=1GB temp_disk=1GB"


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    with controller_cluster(tmp_path, monkeypatch, (29000, 29999)) as cluster:
        yield cluster


def hard_nofile() -> int | None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return None if hard == resource.RLIM_INFINITY else hard


def releases(cluster: Cluster, app: str) -> list[Release]:
    async def go(client: ControllerClient) -> list[Release]:
        return await client.list_releases(app)

    return sorted(cluster.api(go), key=lambda r: r.version)


def test_limit_set_creates_a_release_with_the_values(cluster: Cluster) -> None:
    add_cluster(cluster)
    ok("create", "-r", "", "limited")
    push_release(cluster, "limited")
    hard = hard_nofile()
    fd = 10000 if hard is None else min(10000, hard)
    default = DEFAULT_LINE.format(fd=fd)
    assert ok("limit", "-a", "limited") == f"web: {default}\nworker: {default}\n"

    out = ok("limit", "set", "-a", "limited", "web", "memory=512MB", "cpu=500", "max_fd=4096", "max_procs=256")
    assert out == "Created release v2.\n"
    latest = releases(cluster, "limited")[-1]
    assert latest.version == 2
    web = latest.processes["web"].resources
    assert (web.memory, web.cpu, web.max_fd, web.max_procs) == (536870912, 500, 4096, 256)
    assert latest.processes["worker"].resources.memory == 1 << 30
    assert ok("limit", "-a", "limited", "-t", "web") == (
        "web: cpu=500 max_fd=4096 max_procs=256 memory=512MB temp_disk=1GB\n"
    )

    assert ok("limit", "set", "-a", "limited", "worker", "max_fd=2k", "temp_disk=200MB") == "Created release v3.\n"
    worker = releases(cluster, "limited")[-1].processes["worker"].resources
    assert (worker.max_fd, worker.temp_disk) == (2000, 209715200)
    assert ok("env", "set", "-a", "limited", "A=1") == "Created release v4.\n"
    assert releases(cluster, "limited")[-1].processes["web"].resources.memory == 536870912


def test_bad_limits_are_refused_and_change_nothing(cluster: Cluster) -> None:
    add_cluster(cluster)
    ok("create", "-r", "", "limited")
    push_release(cluster, "limited")
    before = releases(cluster, "limited")

    assert fails("limit", "set", "-a", "limited", "web", "memory=1PB").startswith('error: invalid limit "memory=1PB"')
    assert 'invalid limit "cpu=-1"' in fails("limit", "set", "-a", "limited", "web", "cpu=-1")
    assert 'unknown limit "disk"' in fails("limit", "set", "-a", "limited", "web", "disk=1GB")
    assert 'no process type "clock"' in fails("limit", "set", "-a", "limited", "clock", "cpu=500")
    assert 'no process type "clock"' in fails("limit", "-a", "limited", "-t", "clock")

    assert fails("limit", "set", "-a", "limited", "web", "memory=1MB") == (
        "error: web: memory 1MB is below the minimum of 4MB\n"
    )
    assert "error: web: memory 1024TB is above this host's limit of " in fails(
        "limit", "set", "-a", "limited", "web", "memory=1024TB"
    )
    assert "error: web: cpu 100000000 is above this host's limit of " in fails(
        "limit", "set", "-a", "limited", "web", "cpu=100000000"
    )
    assert fails("limit", "set", "-a", "limited", "web", "cpu=0") == "error: web: cpu 0 is below the minimum of 1\n"
    assert fails("limit", "set", "-a", "limited", "web", "max_procs=unlimited") == (
        'error: invalid limit "max_procs=unlimited": "unlimited" is not a whole number (use e.g. 4096 or 12k)\n'
    )
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert fails("limit", "set", "-a", "limited", "web", f"max_procs={pid_max + 1}") == (
        f"error: web: max_procs {pid_max + 1} is above this host's limit of {pid_max}\n"
    )
    assert "error: web: temp_disk 1024TB is above this host's limit of " in fails(
        "limit", "set", "-a", "limited", "web", "temp_disk=1024TB"
    )
    hard = hard_nofile()
    if hard is not None:
        assert fails("limit", "set", "-a", "limited", "web", f"max_fd={hard + 1}") == (
            f"error: web: max_fd {hard + 1} is above this host's limit of {hard}\n"
        )
    assert releases(cluster, "limited") == before


def test_non_numbers_and_negatives_are_400s_naming_the_limit(cluster: Cluster) -> None:
    async def go(client: ControllerClient) -> list[int | str]:
        found = await client.get_app("raw")
        current = await client.current_release(found.id)
        assert current is not None
        results: list[int | str] = []
        for value in ("lots", -5, 1.5):
            body = current.model_dump(mode="json", include={"app_id", "artifact_id", "env", "processes", "meta"})
            body["processes"]["web"]["resources"]["memory"] = value
            response = await client.http.post("/releases", json=body)
            results.append(response.status_code)
            results.append(response.json()["message"])
        return results

    add_cluster(cluster)
    ok("create", "-r", "", "raw")
    push_release(cluster, "raw")
    before = releases(cluster, "raw")
    status, text, status2, text2, status3, text3 = cluster.api(go)
    assert (status, status2, status3) == (400, 400, 400)
    assert isinstance(text, str) and text.startswith("processes.web.resources.memory: ")
    assert text2 == "web: memory -5 is below the minimum of 4MB"
    assert isinstance(text3, str) and text3.startswith("processes.web.resources.memory: ")
    assert releases(cluster, "raw") == before

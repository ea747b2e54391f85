"""`encom release show / rollback` and `encom deployment`, the real CLI against the real controller role."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from encom.api.errors import ApiError
from encom.api.types import App, Release
from encom.controller.client import ControllerClient
from tests.integration.test_cli import Cluster, add_cluster, controller_cluster, encom, fails, ok, push_release

pytestmark = pytest.mark.integration

PORTS = (34000, 34999)  # the range reserved for these tests


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    with controller_cluster(tmp_path, monkeypatch, PORTS) as cluster:
        add_cluster(cluster)
        yield cluster


def app_of(cluster: Cluster, name: str) -> App:
    return cluster.api(lambda c: c.get_app(name))


def current_version(cluster: Cluster, name: str) -> int:
    release = cluster.api(lambda c: c.current_release(name))
    assert release is not None
    return release.version


def three_releases(cluster: Cluster) -> Release:
    """example at v3 (v1 pushed, v2 and v3 env changes); returns v1."""
    ok("create", "example")
    v1 = push_release(cluster, "example", {"BASE": "1"})
    assert ok("env", "set", "-a", "example", "A=1") == "Created release v2.\n"
    assert ok("env", "set", "-a", "example", "A=2") == "Created release v3.\n"
    return v1


def test_release_show(cluster: Cluster) -> None:
    v1 = three_releases(cluster)
    shown = ok("release", "show", "-a", "example").splitlines()
    assert shown[0] == "Version:     v3"
    assert shown[3] == "Description: Set A"
    assert "  web: python app.py" in shown and "  worker: python worker.py" in shown
    assert "  A=2" in shown and "  BASE=1" in shown
    assert "  web: cpu=1000 max_fd=10000 max_procs=512 memory=1GB temp_disk=1GB" in shown

    by_version = ok("release", "show", "-a", "example", "v1").splitlines()
    assert by_version[:2] == ["Version:     v1", f"ID:          {v1.id}"]
    assert "  A=1" not in by_version and f"Artifact:    {v1.artifact_id}" in by_version
    assert ok("release", "show", "-a", "example", v1.id) == ok("release", "show", "-a", "example", "v1")
    assert ok("release", "show", "-a", "example", v1.id[:8]).splitlines()[0] == "Version:     v1"

    as_json = json.loads(ok("release", "show", "-a", "example", "--json", "v2"))
    assert as_json["version"] == 2 and as_json["env"] == {"BASE": "1", "A": "1"}
    assert fails("release", "show", "-a", "example", "v9") == 'error: release "v9" not found\n'


def test_rollback(cluster: Cluster) -> None:
    three_releases(cluster)
    declined = encom("release", "rollback", "-a", "example", input="n\n")
    assert declined.exit_code == 1 and "Rolling back example to v2. Continue? [y/N]" in declined.output
    assert current_version(cluster, "example") == 3

    accepted = encom("release", "rollback", "-a", "example", input="y\n")
    assert accepted.exit_code == 0 and accepted.stdout.endswith("Rolled back to v2.\n"), accepted.output
    assert current_version(cluster, "example") == 2
    assert ok("env", "-a", "example") == "A=1\nBASE=1\n"
    listed = ok("release", "-a", "example").splitlines()
    assert re.findall(r"^(\*?)\s*(v\d+)", "\n".join(listed[1:]), re.M) == [("", "v3"), ("*", "v2"), ("", "v1")]

    assert ok("release", "rollback", "-a", "example", "-y", "v3") == "Rolled back to v3.\n"
    assert current_version(cluster, "example") == 3
    assert fails("release", "rollback", "-a", "example", "-y", "v3") == "error: v3 is already the current release\n"
    assert ok("release", "rollback", "-a", "example", "-y", "v1") == "Rolled back to v1.\n"
    assert fails("release", "rollback", "-a", "example", "-y") == "error: no release to roll back to\n"
    assert fails("release", "rollback", "-a", "example", "-y", "v7") == 'error: release "v7" not found\n'

    table = ok("deployment", "-a", "example").splitlines()
    assert table[0].split() == ["ID", "STATUS", "RELEASE", "CREATED", "FINISHED"]
    rows = [line.split() for line in table[1:]]
    assert [row[2] for row in rows] == ["v1", "v3", "v2", "v3", "v2", "v1"]
    assert all(row[1] == "complete" and row[-1] == "ago" for row in rows)


def test_rollback_single_release(cluster: Cluster) -> None:
    ok("create", "example")
    assert fails("release", "rollback", "-a", "example", "-y") == "error: no release to roll back to\n"
    push_release(cluster, "example")
    assert fails("release", "rollback", "-a", "example", "-y") == "error: no release to roll back to\n"
    assert fails("release", "rollback", "-a", "example", "-y", "v1") == "error: v1 is already the current release\n"


def test_rollback_to_another_apps_release(cluster: Cluster) -> None:
    three_releases(cluster)
    ok("create", "other")
    foreign = push_release(cluster, "other")

    async def deploy_foreign(client: ControllerClient) -> ApiError:
        with pytest.raises(ApiError) as raised:
            await client.deploy("example", foreign.id)
        return raised.value

    error = cluster.api(deploy_foreign)
    assert (error.status, error.message) == (400, f"release {foreign.id} belongs to another app")
    assert current_version(cluster, "example") == 3
    assert app_of(cluster, "other").release_id == foreign.id

    message = fails("release", "rollback", "-a", "example", "-y", foreign.id)
    assert message == f"error: release {foreign.id} belongs to another app\n"
    assert current_version(cluster, "example") == 3
    assert len(cluster.api(lambda c: c.list_deployments("example"))) == 3
    assert re.search(r"not found", fails("release", "rollback", "-a", "example", "-y", "no-such-release"))


def test_current_release_of_a_missing_app_raises(cluster: Cluster) -> None:
    cluster.api(lambda c: c.create_app("release-fresh"))
    assert cluster.api(lambda c: c.current_release("release-fresh")) is None
    with pytest.raises(ApiError) as missing:
        cluster.api(lambda c: c.current_release("release-missing"))
    assert missing.value.status == 404

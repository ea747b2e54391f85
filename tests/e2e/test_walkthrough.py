"""The walkthrough every user does first, typed as a user types it: key add, create, git push, scale, route, curl.

Tests run in file order and build on each other (one cluster, one user), like the README's walkthrough.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, User, curl, make_user, wait_for

pytestmark = pytest.mark.e2e

PUSH_LINES = [
    "-----> Building example...",
    "-----> Python app detected",
    "Procfile declares types -> web",
    "-----> Creating release...",
    "=====> Scaling initial release to web=1",
    "=====> Application deployed",
]


@pytest.fixture(scope="module")
def repo(user: User) -> Path:
    return user.app_repo("python-web", "example")


def dynos_seen(cluster: Cluster, host: str, requests: int = 30) -> set[str]:
    seen = set()
    for _ in range(requests):
        code, body = curl(cluster.router_port, host)
        assert code == 200, f"{host}: HTTP {code}: {body}"
        match = re.search(r"dyno=(\S+) job=(\S+) port=(\d+)", body)
        assert match, body
        seen.add(match.group(1) + ":" + match.group(3))
    return seen


def test_key_add_and_list(user: User) -> None:
    added = user.encom("key", "add")
    fingerprint = re.search(r"SHA256:\S+", added.out)
    assert fingerprint, added.out
    assert fingerprint.group(0) in user.encom("key").out


def test_create_adds_the_git_remote(user: User, cluster: Cluster, repo: Path) -> None:
    assert "Created example" in user.encom("create", "example", cwd=repo).out
    remote = user.ok("git", "remote", "get-url", "encom", cwd=repo).out.strip()
    assert remote == f"ssh://git@127.0.0.1:{cluster.router_port - 80 + 22}/example.git"
    assert "example" in user.encom("apps").out


def test_push_builds_and_deploys(user: User, repo: Path, cluster: Cluster) -> None:
    push = user.ok("git", "push", "encom", "master", cwd=repo, timeout=300)
    position = 0
    for line in PUSH_LINES:
        found = push.err.find(line, position)
        assert found >= 0, f"push output lacks {line!r} (in order):\n{push.err}"
        position = found
    wait_for("the default route to answer", lambda: curl(cluster.router_port, "example.encom.localhost")[0] == 200)


def test_scale_to_three_on_sequential_ports(user: User, repo: Path) -> None:
    scale = user.encom("scale", "web=3", cwd=repo)
    assert "scaling web: 1=>3" in scale.out
    assert len(re.findall(r"==> web \S+ up", scale.out)) == 2, scale.out
    assert re.search(r"scale completed in \d", scale.out), scale.out
    ps = user.encom("ps", cwd=repo).out
    rows = [line.split() for line in ps.splitlines() if re.search(r"\sweb\s", line)]
    assert len(rows) == 3 and all("up" in row for row in rows), ps
    ports = sorted(int(next(col for col in row if col.isdigit() and len(col) >= 4)) for row in rows)
    assert ports == list(range(ports[0], ports[0] + 3)), f"ports are not sequential: {ports}"
    assert user.encom("scale", cwd=repo).out.strip() == "web=3"


def test_route_reaches_all_three_workers(user: User, repo: Path, cluster: Cluster) -> None:
    added = user.encom("route", "add", "http", "example.localhost", cwd=repo)
    assert re.fullmatch(r"http/[0-9a-f-]+", added.out.strip()), added.out
    wait_for("the new route", lambda: curl(cluster.router_port, "example.localhost")[0] == 200, timeout=10)
    assert len(dynos_seen(cluster, "example.localhost")) == 3
    assert "example.localhost" in user.encom("route", cwd=repo).out


def test_unknown_host_is_404(cluster: Cluster) -> None:
    code, _ = curl(cluster.router_port, "nobody.localhost")
    assert code == 404


def test_env_set_reaches_running_jobs(user: User, repo: Path, cluster: Cluster) -> None:
    user.encom("env", "set", "GREETING=hello-env", cwd=repo)
    assert user.encom("env", "get", "GREETING", cwd=repo).out.strip() == "hello-env"
    assert "GREETING=hello-env" in user.encom("env", cwd=repo).out

    def all_see_it() -> bool:
        return all("greeting=hello-env" in curl(cluster.router_port, "example.localhost")[1] for _ in range(10))

    wait_for("every job to see GREETING", all_see_it, timeout=60)
    user.encom("env", "unset", "GREETING", cwd=repo)
    assert user.run("encom", "env", "get", "GREETING", cwd=repo).code != 0
    wait_for("GREETING to be gone", lambda: "greeting=none" in curl(cluster.router_port, "example.localhost")[1])
    releases = user.encom("release", cwd=repo).out
    assert len(re.findall(r"^\*?\s*v\d+", releases, re.M)) >= 3, releases


def test_log_shows_the_jobs_output(user: User, repo: Path) -> None:
    log = user.encom("log", cwd=repo).out
    assert re.search(r"^\S+Z app\[web\.\d+\]: .*Listening on \d+", log, re.M), log
    assert "app[web." in user.encom("log", "-t", "web", cwd=repo).out


def test_failed_build_leaves_the_release_serving(user: User, repo: Path, cluster: Cluster) -> None:
    (repo / "requirements.txt").write_text("this-package-does-not-exist-encom==9.9.9\n")
    user.ok("git", "commit", "-qam", "broken dependency", cwd=repo)
    push = user.fails("git", "push", "encom", "master", cwd=repo, timeout=300)
    assert "Application deployed" not in push.err
    assert curl(cluster.router_port, "example.localhost")[0] == 200
    user.ok("git", "reset", "-q", "--hard", "HEAD~1", cwd=repo)


def test_second_app_from_nodejs(user: User, cluster: Cluster) -> None:
    repo = user.app_repo("nodejs-web", "nodeapp")
    assert "Created nodeapp" in user.encom("create", "nodeapp", cwd=repo).out
    push = user.ok("git", "push", "encom", "master", cwd=repo, timeout=300)
    assert "Node.js app detected" in push.err or "Nodejs app detected" in push.err, push.err
    assert "=====> Application deployed" in push.err
    wait_for("nodeapp's default route", lambda: curl(cluster.router_port, "nodeapp.encom.localhost")[0] == 200)
    assert "dyno=web.1" in curl(cluster.router_port, "nodeapp.encom.localhost")[1]


def test_scale_to_zero_gives_503(user: User, repo: Path, cluster: Cluster) -> None:
    user.encom("scale", "web=0", cwd=repo)
    wait_for("503 after scale web=0", lambda: curl(cluster.router_port, "example.localhost")[0] == 503)
    user.encom("scale", "web=1", cwd=repo)
    wait_for("200 after scale web=1", lambda: curl(cluster.router_port, "example.localhost")[0] == 200)


def test_route_remove(user: User, repo: Path, cluster: Cluster) -> None:
    listing = user.encom("route", cwd=repo).out
    route_id = re.search(r"http/[0-9a-f-]+", listing.split("example.localhost", 1)[1])
    assert route_id, listing
    user.encom("route", "remove", route_id.group(0), cwd=repo)
    wait_for("404 after route remove", lambda: curl(cluster.router_port, "example.localhost")[0] == 404)


# ------------------------------------------------------------------ bad input gets a clear error


def test_invalid_and_duplicate_app_names(user: User) -> None:
    bad = user.fails("encom", "create", "Bad_Name")
    assert "lowercase" in bad.err
    dup = user.fails("encom", "create", "example")
    assert "already exists" in dup.err


def test_wrong_key_is_rejected(cluster: Cluster, tmp_path: Path) -> None:
    other = make_user(tmp_path / "intruder")
    parts = cluster.add_line.split()
    parts[-1] = "0" * 32
    result = other.fails(*parts)
    assert "401" in result.err or "key" in result.err.lower()


def test_unknown_process_type(user: User, repo: Path) -> None:
    result = user.fails("encom", "scale", "foo=1", cwd=repo)
    assert 'unknown process types: "foo"' in result.err


def test_push_without_buildpack(user: User, cluster: Cluster) -> None:
    repo = user.home / "plain"
    repo.mkdir()
    (repo / "README").write_text("nothing to build\n")
    user.ok("git", "init", "-q", "-b", "master", cwd=repo)
    user.ok("git", "add", ".", cwd=repo)
    user.ok("git", "commit", "-qm", "readme", cwd=repo)
    user.encom("create", "plain", cwd=repo)
    push = user.fails("git", "push", "encom", "master", cwd=repo, timeout=300)
    assert "Unable to select a buildpack" in push.err


def test_push_with_unknown_ssh_key(user: User, repo: Path, tmp_path: Path) -> None:
    stranger = make_user(tmp_path / "stranger")
    push = stranger.fails("git", "push", "encom", "master", cwd=repo, timeout=60)
    assert "Permission denied (publickey)" in push.err


def test_push_to_missing_app(user: User, repo: Path, cluster: Cluster) -> None:
    url = f"ssh://git@127.0.0.1:{cluster.router_port - 80 + 22}/nosuchapp.git"
    push = user.fails("git", "push", url, "master", cwd=repo, timeout=60)
    assert "nosuchapp" in push.err and "does not exist" in push.err


def test_cli_without_cluster_says_how_to_add_one(tmp_path: Path) -> None:
    lonely = make_user(tmp_path / "lonely")
    result = lonely.fails("encom", "apps")
    assert "encom cluster add" in result.err


def test_delete_app(user: User, repo: Path, cluster: Cluster) -> None:
    deleted = user.encom("delete", "-y", "-a", "nodeapp")
    assert "Deleted nodeapp" in deleted.out
    assert "nodeapp" not in user.encom("apps").out
    wait_for("nodeapp's route to go", lambda: curl(cluster.router_port, "nodeapp.encom.localhost")[0] == 404)

"""encomd restarts (detach, kill -9) under load lose no request and no job; a simulated reboot brings every
formation and route back. Its own cluster, as the restarts would disturb the walkthrough's."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    Cluster,
    Follow,
    User,
    cluster_user,
    curl,
    running_cluster,
    start_cluster,
    start_follow,
    stop_follow,
    wait_for,
)

pytestmark = pytest.mark.e2e

# Below Linux's ephemeral range (32768-60999): a client socket of the load loop could otherwise take a role's port
# while encomd is down and make its restart fail to bind.
PORT_BASE = int(os.environ.get("ENCOM_RESTART_PORT_BASE", "16000"))  # another base lets two runs coexist
HOST = "restart.localhost"
LOAD_LIMIT = 60.0  # the load loop never runs longer than this


@dataclass
class Load:
    """Sequential requests through the router (loopback only, 2 s timeout each) until stopped or LOAD_LIMIT."""

    port: int
    host: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    stopped: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def _one(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/", headers={"Host": self.host})
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                self.ok += 1
            else:
                self.failures.append(f"{time.strftime('%H:%M:%S')} HTTP {response.status}")
        except OSError as exc:
            self.failures.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}")
        finally:
            conn.close()

    def _loop(self) -> None:
        deadline = time.monotonic() + LOAD_LIMIT
        while not self.stopped.is_set() and time.monotonic() < deadline:
            self._one()
            time.sleep(0.01)

    def __enter__(self) -> Load:
        self.thread = threading.Thread(target=self._loop, name="load", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        assert self.thread is not None
        self.thread.join(timeout=10)


def check_ports_free() -> None:
    for port in (PORT_BASE + 11, PORT_BASE + 80):  # discoverd, router
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                pytest.fail(f"port {port} is taken: another cluster (another run of this test?) uses base {PORT_BASE}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    check_ports_free()
    state = tmp_path_factory.mktemp("encom-restart-state")
    try:
        with running_cluster(state, PORT_BASE) as cluster:
            yield cluster
    finally:
        kill_leftovers(state)


@pytest.fixture(scope="module")
def user(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> User:
    return cluster_user(cluster, tmp_path_factory.mktemp("restart-home"))


@pytest.fixture(scope="module")
def repo(user: User, cluster: Cluster) -> Path:
    repo = user.app_repo("python-web", "restart")
    user.encom("create", "restart", cwd=repo)
    user.ok("git", "push", "encom", "master", cwd=repo, timeout=300)
    user.encom("scale", "web=3", cwd=repo)
    user.encom("route", "add", "http", HOST, cwd=repo)
    wait_for("the route to answer", lambda: curl(cluster.router_port, HOST)[0] == 200, timeout=30)
    return repo


def up_jobs(user: User, repo: Path) -> set[str]:
    """The web jobs `encom ps` lists as up; empty when it lists any web job in another state."""
    ps = user.encom("ps", cwd=repo).out
    rows = [row.split() for row in ps.splitlines() if re.search(r"\sweb\s", row)]
    if any(row[2] != "up" for row in rows):
        return set()
    return {row[0] for row in rows}


def encomd_pid(cluster: Cluster) -> int:
    return int((cluster.state_dir / "encomd.pid").read_text().strip())


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return not re.search(r"^State:\s+Z", status, re.M)


def runc_list(state: Path) -> list[dict[str, object]]:
    out = subprocess.run(
        ["runc", "--root", str(state / "host" / "runc"), "list", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return json.loads(out or "[]") or []


def running_containers(cluster: Cluster) -> set[str]:
    return {str(c["id"]) for c in runc_list(cluster.state_dir) if c.get("status") == "running"}


def kill_containers(state: Path, delete: bool = True) -> None:
    """Kill every container; without `delete`, runc's state stays behind as after a reboot."""
    root = str(state / "host" / "runc")
    for container in runc_list(state):
        subprocess.run(["runc", "--root", root, "kill", str(container["id"]), "KILL"], capture_output=True, timeout=30)
        pid = int(str(container.get("pid") or 0))
        if pid:
            wait_for(f"container {container['id']} to die", lambda p=pid: not alive(p), timeout=10)  # type: ignore[misc]
        if delete:
            subprocess.run(
                ["runc", "--root", root, "delete", "-f", str(container["id"])], capture_output=True, timeout=30
            )


def haproxy_pid(state: Path) -> int | None:
    try:
        pid = int((state / "router" / "haproxy.pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive(pid) and str(state).encode() in cmdline else None


def kill_leftovers(state: Path) -> None:
    """When a restart failed, `make down` finds no encomd: end what the earlier one left running."""
    pid = haproxy_pid(state)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        wait_for("the leftover haproxy to stop", lambda: not alive(pid), timeout=10)
    if (state / "host" / "runc").exists():
        kill_containers(state)


def kill_encomd(cluster: Cluster) -> None:
    pid = encomd_pid(cluster)
    os.kill(pid, signal.SIGKILL)
    wait_for("encomd to die", lambda: not alive(pid), timeout=10)


def restart_cases(user: User, repo: Path, cluster: Cluster, stop: str) -> None:
    before = up_jobs(user, repo)
    assert len(before) == 3, user.encom("ps", cwd=repo).out
    with Load(cluster.router_port, HOST) as load:
        time.sleep(1)
        if stop == "detach":
            pid = encomd_pid(cluster)
            os.kill(pid, signal.SIGUSR1)
            wait_for("encomd to exit after SIGUSR1", lambda: not alive(pid), timeout=45)
        else:
            kill_encomd(cluster)
        time.sleep(2)  # requests keep flowing through HAProxy while encomd is down
        start_cluster(cluster.state_dir, PORT_BASE)
        wait_for("the same jobs to be up again", lambda: up_jobs(user, repo) == before, timeout=30)
        time.sleep(15)  # past discoverd's TTL and the router's grace: nothing may drop later
    print(f"{stop}: {load.ok} requests ok, {len(load.failures)} failed")
    assert load.ok > 100, f"the load loop barely ran: {load.ok} ok"
    assert not load.failures, f"{len(load.failures)} failed requests (of {load.ok + len(load.failures)}): " + "; ".join(
        load.failures[:10]
    )
    assert up_jobs(user, repo) == before
    containers = running_containers(cluster)
    assert before <= containers, f"jobs {before - containers} have no container"
    assert len(containers) == 3, f"extra containers: {containers - before}"


def test_detach_and_start_again_under_load(user: User, repo: Path, cluster: Cluster) -> None:
    restart_cases(user, repo, cluster, "detach")


def test_kill_9_and_start_again_under_load(user: User, repo: Path, cluster: Cluster) -> None:
    restart_cases(user, repo, cluster, "kill")


def test_app_still_deploys_after_restarts(user: User, repo: Path, cluster: Cluster) -> None:
    user.encom("env", "set", "GREETING=after-restart", cwd=repo)

    def all_see_it() -> bool:
        return all("greeting=after-restart" in curl(cluster.router_port, HOST)[1] for _ in range(10))

    wait_for("the new release to serve", all_see_it, timeout=60)
    wait_for("three web jobs up", lambda: len(up_jobs(user, repo)) == 3, timeout=30)


def restart_encomd(cluster: Cluster) -> None:
    """Stop encomd leaving its jobs running (as an upgrade does), then start it again."""
    pid = encomd_pid(cluster)
    os.kill(pid, signal.SIGUSR1)
    wait_for("encomd to exit after SIGUSR1", lambda: not alive(pid), timeout=45)
    start_cluster(cluster.state_dir, PORT_BASE)


TICKS = 30
TICK = re.compile(r"^(\S+) app\[run\.\d+\]: tick-(\d+)$")


def tick_arrivals(follow: Follow) -> list[tuple[int, float]]:
    """(tick number, seconds from its being written to its showing) of each tick line shown."""
    found = []
    for arrived, text in follow.snapshot():
        match = TICK.match(text)
        if match:
            written = datetime.fromisoformat(match.group(1).replace("Z", "+00:00")).timestamp()
            found.append((int(match.group(2)), arrived - written))
    return found


def test_log_follow_loses_no_line_across_a_redeploy_and_a_restart(user: User, repo: Path, cluster: Cluster) -> None:
    many = user.run_detached(cwd=repo, script="seq 1 12000")  # more than an app keeps: the oldest rotate out
    follow = start_follow(user, repo, "-n", "1")
    try:
        wait_for("the follow to start", lambda: len(follow.snapshot()) >= 1, timeout=15)
        user.run_detached(cwd=repo, script=f"for i in $(seq 1 {TICKS}); do echo tick-$i; sleep 1; done")
        wait_for("five ticks", lambda: len(tick_arrivals(follow)) >= 5, timeout=20)
        user.encom("env", "set", "LOG_FOLLOW=redeployed", cwd=repo)
        restart_encomd(cluster)
        wait_for(f"tick {TICKS}", lambda: any(n == TICKS for n, _ in tick_arrivals(follow)), timeout=TICKS + 30)
        assert follow.proc.poll() is None, "encom log -f ended by itself"
    finally:
        err = stop_follow(follow)
    ticks = tick_arrivals(follow)
    assert [n for n, _ in ticks] == list(range(1, TICKS + 1)), (ticks, err)
    live = ticks[:5] + ticks[-3:]  # while nothing was restarting
    print(f"log -f latency while live: {max(d for _, d in live):.3f} s; stderr: {err.strip()}")
    assert all(delay < 1.0 for _, delay in live), live

    kept = user.encom("log", "-j", many, "-n", "10000", "--raw", cwd=repo).out.splitlines()
    numbers = [int(m) for m in kept if m.isdigit()]
    assert len(kept) == 10_000 and numbers[-1] == 12_000, kept[-5:]
    assert numbers == list(range(numbers[0], 12_001)) and len(numbers) >= 9_990, numbers[:3]


def test_simulated_reboot_brings_back_formation_and_routes(user: User, repo: Path, cluster: Cluster) -> None:
    kill_encomd(cluster)
    kill_containers(cluster.state_dir, delete=False)
    haproxy = haproxy_pid(cluster.state_dir)
    assert haproxy is not None, "haproxy does not run"
    os.kill(haproxy, signal.SIGKILL)
    wait_for("haproxy to die", lambda: not alive(haproxy), timeout=10)
    assert curl(cluster.router_port, HOST)[0] == 0, "the router still answers after the 'reboot'"

    start_cluster(cluster.state_dir, PORT_BASE)
    wait_for("web=3 up again after the reboot", lambda: len(up_jobs(user, repo)) == 3, timeout=90)
    wait_for("the route to answer after the reboot", lambda: curl(cluster.router_port, HOST)[0] == 200, timeout=30)
    wait_for(
        "the default route to answer after the reboot",
        lambda: curl(cluster.router_port, "restart.encom.localhost")[0] == 200,
        timeout=30,
    )
    assert "greeting=after-restart" in curl(cluster.router_port, HOST)[1]
    assert user.encom("scale", cwd=repo).out.strip() == "web=3"
    assert HOST in user.encom("route", cwd=repo).out
    wait_for("exactly three containers", lambda: len(running_containers(cluster)) == 3, timeout=30)
    assert up_jobs(user, repo) == running_containers(cluster), "`encom ps` does not match the running containers"

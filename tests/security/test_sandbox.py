"""Findings 3, 4 and 7: limits that hold for every job, tried the way an app would try them.

- a fork storm from `encom run` stops at the job's `max_procs` (pids cgroup; default 512), and a one-off job gets
  its app's limits (the web type's, or `--type`'s);
- filling the disk from `encom run` or from a build ends in ENOSPC at the job's `temp_disk` (one filesystem for
  /app and /tmp), and nothing of it stays on the host;
- `unshare -Ur`, `unshare -m` and io_uring fail inside a job (the seccomp profile).
Meanwhile the victim app keeps serving every request.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
from pathlib import Path

import pytest

from encom.api.types import DEFAULT_MAX_PROCS
from tests.attacks import FORK_STORM, IO_URING_SETUP, syscall_probe
from tests.e2e.conftest import Cluster, User, curl, wait_for
from tests.security.conftest import Victim, attacker_repo, victim_serves

APP = "sandboxer"
GIB = 1 << 30
FILL = "; ".join(
    [
        "dd if=/dev/zero of=/app/fill bs=1M 2>&1 | grep -o 'No space left on device' | sed 's/^/app=/'",
        "dd if=/dev/zero of=/tmp/fill bs=1M 2>&1 | grep -o 'No space left on device' | sed 's/^/tmp=/'",
        'echo "written=$(( $(stat -c %s /app/fill) + $(stat -c %s /tmp/fill) ))"',
    ]
)
IO_URING = syscall_probe("io_uring", IO_URING_SETUP, "(8, ctypes.c_void_p(0))")
# A build that writes without end: npm runs the app's own `build` script (see the nodejs buildpack).
FILLING_BUILD = {
    "package.json": json.dumps(
        {
            "name": "filler",
            "version": "1.0.0",
            "scripts": {"build": "df -m /app; dd if=/dev/zero of=/app/fill bs=1M; dd if=/dev/zero of=/tmp/fill bs=1M"},
        }
    ),
    "Procfile": "web: node -e 'setInterval(() => {}, 1000)'\n",
}


@pytest.fixture(scope="module")
def attacker(user: User, victim: Victim, cluster: Cluster) -> Path:
    procfile = "web: exec python3 -m http.server $PORT\nworker: sleep infinity\n"
    repo = attacker_repo(user, APP, {"Procfile": procfile})
    user.ok("git", "push", "encom", "master", cwd=repo, timeout=300)
    wait_for("the attacker to answer", lambda: curl(cluster.router_port, f"{APP}.encom.localhost")[0] == 200, 120)
    return repo


def run(user: User, repo: Path, script: str, *options: str) -> dict[str, str]:
    """`encom run [options] sh -c script`: the `key=value` lines it printed."""
    result = user.run("encom", "run", *options, "sh", "-c", script, cwd=repo, timeout=600)
    assert result.code == 0, result.text
    return dict(line.split("=", 1) for line in result.out.splitlines() if "=" in line)


def leftover_disks(state_dir: Path, builds: bool = False) -> list[Path]:
    """Disk images on the host of jobs that have ended (or of every build job, with `builds`)."""
    found = []
    for image in state_dir.glob("**/jobs/*/disk.img"):
        record = json.loads((image.parent / "job.json").read_text())
        if (builds and record["spec"].get("builder")) or record["state"] in ("down", "crashed", "failed"):
            found.append(image)
    return found


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def test_unshare_and_io_uring_fail_in_a_one_off_job(
    cluster: Cluster, user: User, victim: Victim, attacker: Path
) -> None:
    script = "; ".join(
        [
            "unshare -Ur id >/dev/null 2>&1; echo user_ns=$?",
            "unshare -m true >/dev/null 2>&1; echo mount_ns=$?",
            f"python3 -c {shlex.quote(IO_URING)}",
            "echo still=$(echo ok)",
        ]
    )
    with victim_serves(cluster, victim, "unshare from encom run"):
        out = run(user, attacker, script)
    assert (out["user_ns"], out["mount_ns"]) == ("1", "1"), out
    assert out["io_uring"] == os.strerror(errno.EPERM), out
    assert out["still"] == "ok"


def test_a_fork_storm_from_encom_run_stops_at_the_limit(
    cluster: Cluster, user: User, victim: Victim, attacker: Path
) -> None:
    with victim_serves(cluster, victim, "a fork storm"):
        out = run(user, attacker, f"python3 -c {shlex.quote(FORK_STORM)}")
    assert out["error"] == str(errno.EAGAIN), out
    assert out["max"] == str(DEFAULT_MAX_PROCS), out
    assert DEFAULT_MAX_PROCS - 10 <= int(out["forks"]) < DEFAULT_MAX_PROCS, out


def test_filling_the_disk_from_encom_run_gets_enospc(
    cluster: Cluster, user: User, victim: Victim, attacker: Path
) -> None:
    with victim_serves(cluster, victim, "filling the disk from encom run"):
        out = run(user, attacker, FILL)
    assert (out["app"], out["tmp"]) == ("No space left on device", "No space left on device"), out
    assert 0.9 * GIB <= int(out["written"]) <= GIB, out  # /app and /tmp share one 1 GiB filesystem
    assert not leftover_disks(cluster.state_dir)


def test_a_build_that_fills_its_disk_fails_and_leaves_nothing(cluster: Cluster, user: User, victim: Victim) -> None:
    repo = attacker_repo(user, "filler", FILLING_BUILD)
    free_before = free_bytes(cluster.state_dir)
    with victim_serves(cluster, victim, "a build filling its disk"):
        pushed = user.run("git", "push", "encom", "master", cwd=repo, timeout=600)
    assert pushed.code != 0, pushed.text
    assert "No space left on device" in pushed.err, pushed.err
    images = leftover_disks(cluster.state_dir, builds=True)
    assert not images, images  # the build's 4 GiB disk went with it
    # what the build wrote is gone too (other tests may write meanwhile: a loose bound, far below 4 GiB)
    assert free_bytes(cluster.state_dir) >= free_before - GIB // 2


def test_a_one_off_job_gets_its_types_limits(cluster: Cluster, user: User, victim: Victim, attacker: Path) -> None:
    user.encom("limit", "set", "web", "max_procs=64", "temp_disk=64MB", cwd=attacker)
    shown = user.encom("limit", cwd=attacker).out
    assert "web: cpu=1000 max_fd=" in shown and "max_procs=64 memory=1GB temp_disk=64MB" in shown, shown
    assert "worker: cpu=1000" in shown and f"max_procs={DEFAULT_MAX_PROCS} memory=1GB temp_disk=1GB" in shown

    with victim_serves(cluster, victim, "a fork storm in a limited one-off job"):
        out = run(user, attacker, f"python3 -c {shlex.quote(FORK_STORM)}")
    assert (out["error"], out["max"]) == (str(errno.EAGAIN), "64"), out
    assert int(out["forks"]) < 64, out
    size = run(user, attacker, "echo size=$(df -m --output=size /app | tail -1 | tr -d ' ')")["size"]
    assert 32 < int(size) <= 64, size

    out = run(user, attacker, "echo max=$(cat /sys/fs/cgroup/pids/pids.max)", "--type", "worker")
    assert out["max"] == str(DEFAULT_MAX_PROCS), out
    refused = user.fails("encom", "run", "--type", "clock", "true", cwd=attacker)
    assert 'no process type "clock" in the current release (types: web, worker)' in refused.err, refused.err

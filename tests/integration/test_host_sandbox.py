"""The limits every job runs under, with real runc containers: the seccomp profile (no namespaces, no io_uring),
the pids cgroup (`max_procs`), and the job's own disk (`temp_disk`: /app and /tmp on one filesystem, ENOSPC to
the job, nothing left on the host). Reuses test_host's fixtures, on ports 35000-35999."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import shlex
import subprocess
from pathlib import Path

import pytest

from encom.api.settings import Ports
from encom.api.types import DEFAULT_MAX_PROCS, Resources
from encom.host import disk
from encom.host.bundle import BundlePaths
from tests.attacks import CLONE_NEWUSER, FORK_STORM, IO_URING_SETUP, UNSHARE, syscall_probe
from tests.integration import test_host
from tests.integration.roles import free_ports
from tests.integration.test_host import Cluster, eventually, spec
from tests.integration.test_host import cluster as cluster  # the fixture
from tests.integration.test_host_isolation import app_output, run_to_end

pytestmark = [
    pytest.mark.integration,
]

MIB = 1 << 20


def pick_ports() -> Ports:
    """Role ports in 35000-35499, a block of job ports in 35500-35999 (the range reserved for these tests)."""
    free = free_ports(35000, 35499, 3)
    job_start = random.randrange(35500, 35990, 10)
    return Ports(discoverd=free[0], blobstore=free[1], host=free[2], job_start=job_start, job_end=job_start + 9)


@pytest.fixture(autouse=True)
def _our_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(test_host, "pick_ports", pick_ports)


def python(code: str) -> str:
    return f"python3 -c {shlex.quote(code)}"


async def test_seccomp_refuses_namespaces_and_io_uring_and_real_programs_still_work(cluster: Cluster) -> None:
    discoverd = f"{cluster.settings.discoverd_url}/services"
    script = "; ".join(
        [
            'echo "seccomp=$(grep "^Seccomp:" /proc/self/status | cut -f2)"',
            "if unshare -Ur true 2>/dev/null; then echo unshare_r=allowed; else echo unshare_r=refused; fi",
            "if unshare -m true 2>/dev/null; then echo unshare_m=allowed; else echo unshare_m=refused; fi",
            python(syscall_probe("io_uring_setup", IO_URING_SETUP, "(8, ctypes.c_void_p(0))")),
            python(syscall_probe("unshare_syscall", UNSHARE, f"({CLONE_NEWUSER},)")),
            # what apps and builds do: threads and subprocesses (clone3 -> ENOSYS -> clone), a shell, curl, git
            python(
                "import threading, subprocess; t = threading.Thread(target=print, args=('thread=ok',)); t.start(); "
                "t.join(); print('subprocess=' + subprocess.run(['echo', 'ok'], capture_output=True, text=True)"
                ".stdout.strip())"
            ),
            f'echo "curl=$(curl -s -o /dev/null -w "%{{http_code}}" {discoverd})"',
            "git init -q /tmp/repo && git -C /tmp/repo -c user.email=a@b -c user.name=a commit -q --allow-empty -m x "
            "&& echo git=ok",
            'echo "bash=$(echo $((6 * 7)))"',
        ]
    )
    ended, lines = await run_to_end(cluster, cmd=script)
    assert ended.state == "down", (ended, lines)
    out = app_output(lines)
    assert out["seccomp"] == "2", out  # filter mode
    assert (out["unshare_r"], out["unshare_m"]) == ("refused", "refused"), out
    assert out["io_uring_setup"] == os.strerror(errno.EPERM), out
    assert out["unshare_syscall"] == os.strerror(errno.EPERM), out
    assert (out["thread"], out["subprocess"], out["curl"], out["git"], out["bash"]) == ("ok", "ok", "401", "ok", "42")


async def test_a_fork_storm_stops_at_max_procs(cluster: Cluster) -> None:
    ended, lines = await run_to_end(cluster, cmd=python(FORK_STORM), resources=Resources(max_procs=40))
    assert ended.state == "down", (ended, lines)
    out = app_output(lines)
    assert out["error"] == str(errno.EAGAIN), out
    assert out["max"] == "40" and int(out["current"]) <= 40, out
    assert 30 <= int(out["forks"]) < 40, out  # bash, the runner and python hold the rest

    ended, lines = await run_to_end(cluster, cmd="cat /sys/fs/cgroup/pids/pids.max")
    assert [line.msg for line in lines if line.source == "app"] == [str(DEFAULT_MAX_PROCS)]


async def test_app_and_tmp_share_one_disk_that_fills_up_without_touching_the_host(cluster: Cluster) -> None:
    size = 64 * MIB
    data_dir = cluster.settings.data_dir
    script = "; ".join(
        [
            "dd if=/dev/zero of=/app/fill bs=1M 2>/tmp/dd.err; grep -o 'No space left on device' /tmp/dd.err | "
            "head -1 | sed 's/^/app_error=/'",
            "dd if=/dev/zero of=/tmp/fill bs=1M 2>/dev/null; echo tmp_status=$?",
            'echo "app_bytes=$(stat -c %s /app/fill)"',
            'echo "tmp_bytes=$(stat -c %s /tmp/fill)"',
            'echo "same_fs=$( [ "$(stat -c %d /app)" = "$(stat -c %d /tmp)" ] && echo yes)"',
            "echo ready; sleep 60",
        ]
    )
    job = await cluster.host.add_job(spec(cmd=script, resources=Resources(temp_disk=size)))

    async def ready() -> bool:
        return any(line.msg == "ready" for line in await cluster.log_lines(job.id))

    await eventually(ready, "the job to fill its disk")
    paths = BundlePaths(data_dir / "host" / "jobs" / job.id)
    image = disk.image_of(paths.dir)
    assert disk.is_mounted(paths.disk)
    assert image.stat().st_blocks * 512 <= size  # what the host's disk gave the job: at most temp_disk
    out = app_output(await cluster.log_lines(job.id))
    assert out["app_error"] == "No space left on device" and out["tmp_status"] != "0", out
    written = int(out["app_bytes"]) + int(out["tmp_bytes"])
    assert size * 0.8 <= written <= size, out
    assert out["same_fs"] == "yes"

    await cluster.host.stop_job(job.id)
    await cluster.wait_job(job.id, "down", "crashed")
    assert not disk.is_mounted(paths.disk)
    assert not image.exists() and not paths.disk.exists()
    assert not _loop_devices_of(image)


async def test_a_job_whose_disk_the_host_cannot_hold_fails_to_start(cluster: Cluster) -> None:
    ended, _ = await run_to_end(cluster, cmd="true", resources=Resources(temp_disk=1 << 60))
    assert ended.state == "failed" and ended.error, ended
    assert ended.error.startswith("not enough disk on this host for temp_disk "), ended.error


async def test_an_adopted_job_keeps_its_disk_and_an_ended_ones_is_removed_at_start(cluster: Cluster) -> None:
    keep = await cluster.host.add_job(spec(cmd="echo kept > /app/mine; sleep 60"))
    lost = await cluster.host.add_job(spec(cmd="sleep 60"))
    for job in (keep, lost):
        await cluster.wait_job(job.id, "up")
    lost_pid = (await cluster.host.get_job(lost.id)).pid
    assert lost_pid is not None
    jobs_dir = cluster.settings.data_dir / "host" / "jobs"
    kept, gone = BundlePaths(jobs_dir / keep.id), BundlePaths(jobs_dir / lost.id)
    await eventually(lambda: _exists(kept.app / "mine"), "the job to write its file")

    await cluster.stop_host(detach=True)
    cluster.delete_container(lost.id)  # ended while no encomd was watching: its disk is left mounted
    await asyncio.to_thread(os.waitpid, lost_pid, 0)  # our child (the host role ran in this process): reap it
    assert disk.is_mounted(gone.disk)
    await cluster.start_host()

    assert (await cluster.host.get_job(keep.id)).state == "up"
    assert disk.is_mounted(kept.disk) and (kept.app / "mine").read_text() == "kept\n"
    assert (await cluster.host.get_job(lost.id)).state == "crashed"
    assert not disk.is_mounted(gone.disk) and not disk.image_of(gone.dir).exists()

    await cluster.host.stop_job(keep.id)
    assert not disk.is_mounted(kept.disk) and not disk.image_of(kept.dir).exists()


async def _exists(path: Path) -> bool:
    return await asyncio.to_thread(path.exists)


def _loop_devices_of(image: os.PathLike[str]) -> str:
    return subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True).stdout.strip()

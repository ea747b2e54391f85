"""What a job can see and do inside its runc container, with real containers: its app's own uid, its own cgroup,
pid and mount namespaces, a read-only root, no capabilities; and what the host says when a job runs out of memory
or cannot run its command. Reuses test_host's fixtures, on ports 28000-28999."""

from __future__ import annotations

import asyncio
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from encom.api.settings import Ports
from encom.api.types import HostJob, LogLine, Resources
from encom.host.bundle import BundlePaths
from tests.integration import test_host
from tests.integration.roles import free_ports
from tests.integration.test_host import Cluster, eventually, spec
from tests.integration.test_host import cluster as cluster  # the fixture

pytestmark = [
    pytest.mark.integration,
]


def pick_ports() -> Ports:
    """Role ports in 28000-28499, a block of job ports in 28500-28999 (the range reserved for these tests)."""
    free = free_ports(28000, 28499, 3)
    job_start = random.randrange(28500, 28990, 10)
    return Ports(discoverd=free[0], blobstore=free[1], host=free[2], job_start=job_start, job_end=job_start + 9)


@pytest.fixture(autouse=True)
def _our_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    """test_host's `cluster` fixture, on this file's ports (autouse fixtures are set up first)."""
    monkeypatch.setattr(test_host, "pick_ports", pick_ports)


async def run_to_end(c: Cluster, **changes: Any) -> tuple[HostJob, list[LogLine]]:
    job = await c.host.add_job(spec(**changes))
    ended = await c.wait_job(job.id, "down", "crashed", "failed")
    lines = [line async for line in c.host.job_log(job.id, lines=1000)]
    return ended, lines


def app_output(lines: list[LogLine]) -> dict[str, str]:
    """`key=value` lines the job printed."""
    return dict(line.msg.split("=", 1) for line in lines if line.source == "app" and "=" in line.msg)


def encom_lines(lines: list[LogLine]) -> list[str]:
    return [line.msg for line in lines if line.source == "encom"]


async def test_each_app_runs_as_its_own_stable_uid(cluster: Cluster) -> None:
    async def ids(app_id: str) -> tuple[int, int]:
        ended, lines = await run_to_end(cluster, app_id=app_id, cmd='echo "uid=$(id -u)"; echo "gid=$(id -g)"')
        assert ended.state == "down", (ended, lines)
        out = app_output(lines)
        return int(out["uid"]), int(out["gid"])

    a_uid, a_gid = await ids("app-a")
    b_uid, _ = await ids("app-b")
    assert a_uid >= 100_000 and a_gid == a_uid
    assert b_uid >= 100_000 and b_uid != a_uid
    assert await ids("app-a") == (a_uid, a_gid)

    await cluster.stop_host()
    await cluster.start_host()
    assert await ids("app-a") == (a_uid, a_gid)
    assert (await ids("app-c"))[0] not in (a_uid, b_uid)


async def test_a_job_sees_only_itself(cluster: Cluster) -> None:
    resources = Resources(memory=64 << 20, max_fd=1234)
    script = "; ".join(
        [
            'echo "cgroup=$(grep -E "^[0-9]+:memory:" /proc/self/cgroup)"',
            'echo "memory=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"',
            'echo "nofile=$(ulimit -n)"',
            'echo "uid=$(id -u)"',
            "if touch /usr/x 2>/dev/null; then echo usr=writable; else echo usr=read-only; fi",
            "if touch /x 2>/dev/null; then echo root=writable; else echo root=read-only; fi",
            "if touch /app/x /tmp/x; then echo app_tmp=writable; fi",
            'echo "caps=$(grep CapEff /proc/self/status | cut -f2)"',
            'echo "bounding=$(grep CapBnd /proc/self/status | cut -f2)"',
            'echo "nnp=$(grep NoNewPrivs /proc/self/status | cut -f2)"',
            'echo "proc=$(ls /proc | grep -E "^[0-9]+$" | sort -n | tr "\\n" " ")"',
            'echo "ps=$(ps -e -o pid=,comm= | tr -s " " | tr "\\n" ",")"',
        ]
    )
    ended, lines = await run_to_end(cluster, cmd=script, resources=resources)
    assert ended.state == "down", (ended, lines)
    out = app_output(lines)
    assert out["cgroup"].endswith(f":memory:/encom/{ended.id}"), out
    assert int(out["memory"]) == 64 << 20
    assert out["nofile"] == "1234"
    assert int(out["uid"]) >= 100_000
    assert out["usr"] == "read-only" and out["root"] == "read-only"
    assert out["app_tmp"] == "writable"
    assert int(out["caps"], 16) == 0 and int(out["bounding"], 16) == 0
    assert out["nnp"] == "1"
    pids = [int(p) for p in out["proc"].split()]
    assert pids and pids[0] == 1 and max(pids) < 100, out["proc"]  # a pid namespace of its own: a handful of pids
    commands = [entry.strip().split(" ", 1)[1] for entry in out["ps"].split(",") if entry.strip()]
    assert set(commands) <= {"bash", "ps", "tr", "grep", "sort", "ls"}, commands  # nothing of the host's


async def test_one_app_cannot_touch_another(cluster: Cluster) -> None:
    b = await cluster.host.add_job(spec(app_id="app-b", cmd="echo secret > /app/secret.txt; echo ready; sleep 60"))
    up = await cluster.wait_job(b.id, "up")
    assert up.pid is not None

    async def b_ready() -> bool:
        return any(line.msg == "ready" for line in await cluster.log_lines(b.id))

    await eventually(b_ready, "app B to write its file")
    b_file = BundlePaths(cluster.settings.data_dir / "host" / "jobs" / b.id).app / "secret.txt"
    assert b_file.read_text() == "secret\n"
    b_uid = b_file.stat().st_uid

    script = (
        f"if cat {b_file} /app/secret.txt 2>/dev/null; then echo read=yes; else echo read=no; fi; "
        f'if kill -0 {up.pid} 2>/dev/null; then echo signal=yes; else echo signal=no; fi; echo "uid=$(id -u)"'
    )
    _, lines = await run_to_end(cluster, app_id="app-a", cmd=script)
    out = app_output(lines)
    assert (out["read"], out["signal"]) == ("no", "no"), lines
    a_uid = int(out["uid"])
    assert a_uid != b_uid

    # Even on the host, where the path exists, A's uid can neither read B's files nor signal B's processes.
    def as_a(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, user=a_uid, group=a_uid, extra_groups=[], capture_output=True, text=True)

    assert (await asyncio.to_thread(as_a, "cat", str(b_file))).returncode != 0
    assert (await asyncio.to_thread(as_a, "ls", str(b_file.parent))).returncode != 0
    killed = await asyncio.to_thread(as_a, "kill", "-0", str(up.pid))
    assert killed.returncode != 0 and "not permitted" in killed.stderr, killed.stderr

    await cluster.host.stop_job(b.id)


async def test_internal_apis_refuse_a_job_without_the_secret(cluster: Cluster) -> None:
    urls = {
        "host": f"{cluster.settings.host_url}/host/jobs",
        "discoverd": f"{cluster.settings.discoverd_url}/services",
    }
    script = "; ".join(f'echo "{name}=$(curl -s -o /dev/null -w "%{{http_code}}" {url})"' for name, url in urls.items())
    ended, lines = await run_to_end(cluster, cmd=script)
    assert ended.state == "down", (ended, lines)
    assert app_output(lines) == {"host": "401", "discoverd": "401"}, lines


async def test_out_of_memory_is_said_in_the_log(cluster: Cluster) -> None:
    ended, lines = await run_to_end(
        cluster, cmd="exec python3 -c 'x = bytearray(256 << 20)'", resources=Resources(memory=32 << 20)
    )
    assert (ended.state, ended.exit_status, ended.error) == ("crashed", 137, "out of memory"), ended
    said = encom_lines(lines)
    assert said[-2:] == ["Process exited with status 137 (out of memory)", "State changed from up to crashed"], said
    (exit_line,) = [line for line in lines if line.msg.startswith("Process exited")]
    assert exit_line.format().endswith(" encom[web.1]: Process exited with status 137 (out of memory)")


async def test_a_command_that_does_not_exist_fails_with_bash_reason(cluster: Cluster) -> None:
    ended, lines = await run_to_end(cluster, cmd="this-command-does-not-exist")
    assert (ended.state, ended.exit_status) == ("failed", 127), ended
    assert ended.error and "this-command-does-not-exist: command not found" in ended.error, ended.error
    assert any(line.startswith("Failed to start: exited with status 127: ") for line in encom_lines(lines)), lines
    assert any("command not found" in line.msg and line.stream == "stderr" for line in lines), lines


async def test_a_container_that_cannot_start_fails_with_runc_reason(cluster: Cluster) -> None:
    ended, lines = await run_to_end(cluster, args=["/no/such/program"])
    assert ended.state == "failed" and ended.error and "/no/such/program" in ended.error, ended
    said = encom_lines(lines)
    assert said[-2:] == [f"Failed to start: {ended.error}", "State changed from starting to failed"], said


async def test_state_changes_are_in_the_log(cluster: Cluster) -> None:
    job = await cluster.host.add_job(spec(cmd="sleep 60", port=True))
    await cluster.wait_job(job.id, "up")
    await cluster.host.stop_job(job.id)
    lines = [line async for line in cluster.host.job_log(job.id, lines=1000)]
    assert encom_lines(lines) == [
        "Starting process with command `sleep 60`",
        "State changed from starting to up",
        "Stopping process with SIGTERM",
        "State changed from up to stopping",
        "Process exited with status 143",
        "State changed from stopping to down",
    ]


async def test_build_jobs_run_as_the_app_uid_and_can_write(cluster: Cluster) -> None:
    script = (
        'echo "uid=$(id -u)"; echo "home=$HOME"; mkdir -p /tmp/cache/x && echo "tmp=ok"; '
        'echo hi > /app/built && echo "app=ok"; echo "uv=$(/encom/bin/uv --version >/dev/null 2>&1 && echo ok)"; '
        'echo "slugbuilder=$(test -r /encom/build/slugbuilder.py && echo ok)"'
    )
    ended, lines = await run_to_end(cluster, app_id="app-a", args=["/bin/bash", "-c", script], builder=True)
    assert ended.state == "down", (ended, lines)
    out = app_output(lines)
    assert int(out["uid"]) >= 100_000
    expected_uv = "ok" if _has_uv() else ""
    assert (out["home"], out["tmp"], out["app"], out["uv"], out["slugbuilder"]) == (
        "/app",
        "ok",
        "ok",
        expected_uv,
        "ok",
    ), out
    assert encom_lines(lines) == []  # a build's log is the push output: no host lines in it


def _has_uv() -> bool:
    from encom.host.service import find_uv

    found = find_uv()
    return found is not None and Path(found).is_file()

"""The host agent as encomd runs it: real runc containers, the real discoverd and blobstore roles, driven only
through HostClient (and DiscoverdClient / BlobstoreClient to look at what the host did)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import random
import subprocess
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from encom.api.errors import ApiError
from encom.api.role import RoleContext
from encom.api.settings import Ports, Settings
from encom.api.types import (
    ArtifactCreate,
    HealthCheck,
    HostJob,
    HostJobSpec,
    Job,
    LogLine,
    ProcessType,
    ReleaseCreate,
    Resources,
    RouterLogEntry,
    utcnow,
)
from encom.blobstore import service as blobstore_service
from encom.blobstore.client import BlobstoreClient
from encom.bootstrap.daemon import become_subreaper
from encom.bootstrap.tls import ensure_tls
from encom.controller.client import ControllerClient
from encom.discoverd import service as discoverd_service
from encom.discoverd.client import HOST_SERVICE, DiscoverdClient
from encom.host import service as host_service
from encom.host.client import HostClient
from encom.host.process import zombie_children
from tests.integration import roles
from tests.integration.conftest import PORTS as CONTROLLER_PORTS
from tests.integration.conftest import running_controller
from tests.integration.roles import free_port, free_ports, start_role

pytestmark = [
    pytest.mark.integration,
]

WAIT = 15.0
T = TypeVar("T")


def pick_ports() -> Ports:
    """Role ports in 22000-22499, a block of job ports in 22500-22999 (the range reserved for these tests)."""
    free = free_ports(22000, 22499, 3)
    job_start = random.randrange(22500, 22990, 10)
    return Ports(discoverd=free[0], blobstore=free[1], host=free[2], job_start=job_start, job_end=job_start + 9)


within = partial(roles.within, seconds=WAIT)
eventually = partial(roles.eventually, seconds=WAIT, poll=0.02)


@dataclass
class Cluster:
    settings: Settings
    host: HostClient
    discoverd: DiscoverdClient
    blobstore: BlobstoreClient
    host_task: asyncio.Task[None] | None = None
    host_ctx: RoleContext | None = None

    @property
    def runc_root(self) -> Path:
        return self.settings.data_dir / "host" / "runc"

    async def start_host(self) -> None:
        host = await start_role(host_service.run, self.settings, "host", WAIT)
        self.host_ctx, self.host_task = host.ctx, host.task

    async def stop_host(self, detach: bool = False) -> None:
        assert self.host_task is not None and self.host_ctx is not None
        self.host_ctx.detach = detach
        self.host_task.cancel()
        await within(asyncio.gather(self.host_task, return_exceptions=True), "the host role to stop", seconds=30)
        self.host_task = None

    def containers(self) -> list[dict[str, Any]]:
        out = subprocess.run(
            ["runc", "--root", str(self.runc_root), "list", "--format", "json"], capture_output=True, text=True
        ).stdout
        return json.loads(out or "null") or []

    def delete_container(self, container_id: str) -> None:
        subprocess.run(["runc", "--root", str(self.runc_root), "delete", "--force", container_id], check=False)

    async def wait_job(self, job_id: str, *states: str, seconds: float = WAIT) -> HostJob:
        async def poll() -> HostJob:
            while True:
                job = await self.host.get_job(job_id)
                if job.state in states:
                    return job
                await asyncio.sleep(0.02)

        return await within(poll(), f"job {job_id} to reach {'/'.join(states)}", seconds=seconds)

    async def add_job_of_other_app(self) -> HostJob:
        return await self.host.add_job(spec(cmd=TICKER.format(name="other"), app_id="app-2"))

    async def log_lines(self, job_id: str, lines: int = 1000) -> list[LogLine]:
        """The app's own lines (not the host's `encom` lines about the job's state)."""
        return [line async for line in self.host.job_log(job_id, lines=lines) if line.source == "app"]


@contextlib.asynccontextmanager
async def host_cluster(settings: Settings) -> AsyncIterator[Cluster]:
    """discoverd, blobstore and a host role on `settings`' ports; every container and role gone at the end, and
    no zombie left behind by this host."""
    become_subreaper()
    reap_earlier_orphans()
    started = [
        await start_role(discoverd_service.run, settings, "discoverd", WAIT),
        await start_role(blobstore_service.run, settings, "blobstore", WAIT),
    ]
    c = Cluster(
        settings,
        HostClient(settings.host_url, settings.internal_secret),
        DiscoverdClient(settings.discoverd_url, settings.internal_secret),
        BlobstoreClient(settings.blobstore_url, settings.internal_secret),
    )
    await c.start_host()
    try:
        yield c
    finally:
        if c.host_task is not None:
            await c.stop_host()
        leftover = c.containers()
        for container in leftover:  # never leave a container behind, even when the host failed to
            c.delete_container(container["id"])
        for role in reversed(started):
            role.task.cancel()
        await asyncio.gather(*(role.task for role in started), return_exceptions=True)
        for client in (c.host, c.discoverd, c.blobstore):
            await client.aclose()
        assert not leftover, f"the host left containers running: {leftover}"
        await eventually(lambda: _no_zombies(), "our zombie children to be reaped", seconds=3)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with host_cluster(Settings(data_dir=tmp_path, ports=pick_ports())) as c:
        yield c


def reap_earlier_orphans() -> None:
    """Once this test process is a subreaper (the first host test makes it one), what earlier tests' processes
    leave re-parents to it: reap those zombies, so the check at the end sees only this host's."""
    for pid in zombie_children():
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


async def _no_zombies() -> bool:
    return not zombie_children()


def spec(**changes: Any) -> HostJobSpec:
    base: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "app_id": "app-1",
        "app_name": "myapp",
        "release_id": "rel-1",
        "process_type": "web",
        "dyno": "web.1",
        "stop_grace": 5.0,
    }
    return HostJobSpec.model_validate(base | changes)


def web_spec(**changes: Any) -> HostJobSpec:
    return spec(
        cmd="exec python3 -m http.server $PORT",
        port=True,
        service="myapp-web",
        check=HealthCheck(start_timeout=10),
        **changes,
    )


async def test_web_job_comes_up_registered_and_serving(cluster: Cluster) -> None:
    started = time.monotonic()
    job = await cluster.host.add_job(web_spec())
    assert job.state == "starting"
    assert job.port == cluster.settings.ports.job_start
    up = await cluster.wait_job(job.id, "up", "crashed", "failed")
    elapsed = time.monotonic() - started
    assert up.state == "up", up
    print(f"start-to-up (PUT to health check passed and registered): {elapsed * 1000:.0f} ms")

    instances = await cluster.discoverd.instances("myapp-web")
    assert [(i.id, i.addr) for i in instances] == [(job.id, f"127.0.0.1:{job.port}")]
    assert instances[0].meta["job_id"] == job.id
    assert instances[0].meta["app_id"] == "app-1"
    assert instances[0].meta["release_id"] == "rel-1"
    assert instances[0].meta["process_type"] == "web"

    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{job.port}/")
    assert response.status_code == 200

    stopped = await cluster.host.stop_job(job.id)
    assert stopped.state == "down", stopped
    assert await cluster.discoverd.instances("myapp-web") == []
    assert cluster.containers() == []


async def expect_api_error(awaitable: Awaitable[Any]) -> ApiError:
    with pytest.raises(ApiError) as exc:
        await awaitable
    return exc.value


async def test_router_access_lines_join_the_jobs_log(cluster: Cluster) -> None:
    job = await cluster.host.add_job(web_spec())
    assert (await cluster.wait_job(job.id, "up", "crashed", "failed")).state == "up"
    now = utcnow()
    await cluster.host.add_router_log(job.id, [RouterLogEntry(timestamp=now, msg="GET / 200 3ms 12B req-1")])
    [line] = [line for line in await cluster.host.app_log("app-1", lines=50) if line.source == "router"]
    assert (line.job_id, line.dyno, line.msg, line.timestamp) == (job.id, "web.1", "GET / 200 3ms 12B req-1", now)
    assert line.format().endswith(" router[web.1]: GET / 200 3ms 12B req-1")
    missing = await expect_api_error(cluster.host.add_router_log("no-such-job", []))
    assert missing.status == 404
    too_long = [RouterLogEntry.model_construct(timestamp=now, msg="x" * 10_001)]
    assert (await expect_api_error(cluster.host.add_router_log(job.id, too_long))).status == 400
    await cluster.host.stop_job(job.id)


async def test_host_registers_itself_in_discoverd(cluster: Cluster) -> None:
    (instance,) = await eventually(lambda: cluster.discoverd.instances(HOST_SERVICE), "the host in discoverd")
    assert instance.meta == {"id": cluster.settings.host_id, "url": cluster.settings.host_url}
    status = await cluster.host.status()
    assert status.id == cluster.settings.host_id


async def test_api_requires_the_internal_secret(cluster: Cluster) -> None:
    async with HostClient(cluster.settings.host_url, "wrong") as bad:
        with pytest.raises(ApiError) as exc:
            await bad.list_jobs()
    assert exc.value.status == 401
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{cluster.settings.host_url}/ping")).status_code == 200


async def test_three_jobs_get_sequential_ports(cluster: Cluster) -> None:
    jobs = [await cluster.host.add_job(spec(cmd="sleep 60", port=True)) for _ in range(3)]
    start = cluster.settings.ports.job_start
    assert [j.port for j in jobs] == [start, start + 1, start + 2]
    for job in jobs:
        await cluster.wait_job(job.id, "up")
    assert {j.id for j in await cluster.host.list_jobs()} == {j.id for j in jobs}


async def test_events_stream_current_jobs_then_changes(cluster: Cluster) -> None:
    first = await cluster.host.add_job(spec(cmd="sleep 60"))
    await cluster.wait_job(first.id, "up")
    seen: list[tuple[str, str]] = []

    async def collect() -> None:
        async for event in cluster.host.events():
            seen.append((event.job.id, event.job.state))
            if event.job.id != first.id and event.job.state == "down":
                return

    collector = asyncio.create_task(collect())
    await within(_until(lambda: bool(seen)), "the current jobs on the event stream")
    second = await cluster.host.add_job(spec(cmd="exit 0"))
    await within(collector, "the second job's events")
    assert seen[0] == (first.id, "up")
    assert [s for i, s in seen if i == second.id] == ["starting", "up", "down"]


async def _until(condition: Callable[[], bool]) -> None:
    while True:
        if condition():
            return
        await asyncio.sleep(0.01)


async def test_job_output_lands_in_its_log(cluster: Cluster) -> None:
    script = (
        "echo hello out; echo hello err >&2; printf 'bad \\377\\376 bytes\\n'; "
        "head -c 25000 /dev/zero | tr '\\0' a; echo; printf 'no newline at the end'"
    )
    job = await cluster.host.add_job(spec(cmd=script))
    followed = await within(_collect(cluster.host.job_log(job.id, lines=0, follow=True)), "the followed log to end")
    followed = [line for line in followed if line.source == "app"]
    ended = await cluster.wait_job(job.id, "down", "crashed")
    assert ended.state == "down" and ended.exit_status == 0, ended

    lines = await cluster.log_lines(job.id)
    assert [line.msg for line in followed] == [line.msg for line in lines]
    by_stream = [(line.stream, line.msg) for line in lines]
    assert ("stdout", "hello out") in by_stream
    assert ("stderr", "hello err") in by_stream
    assert ("stdout", "bad \ufffd\ufffd bytes") in by_stream
    assert [len(m) for s, m in by_stream if m.startswith("aaa")] == [10_000, 10_000, 5_000]
    assert [m for s, m in by_stream if s == "stdout"][-1] == "no newline at the end"
    assert all(line.job_id == job.id and line.app_id == "app-1" and line.dyno == "web.1" for line in lines)

    app_lines = await cluster.host.app_log("app-1", lines=2, process_type="web")
    assert [line.msg for line in app_lines] == ["Process exited with status 0", "State changed from up to down"]
    assert await cluster.host.app_log("other-app") == []


async def _collect(source: AsyncIterator[T]) -> list[T]:
    return [item async for item in source]


TICKER = 'i=0; while true; do i=$((i+1)); echo "{name} $i $(date +%s.%N)"; sleep 0.3; done'


@dataclass
class Followed:
    """What an app log follow received: (arrival time, line), and whether the history had ended."""

    lines: list[tuple[float, LogLine]]
    history: int | None = None  # how many lines came before the live ones (None: the history has not ended)

    @property
    def live(self) -> bool:
        return self.history is not None

    def app(self, prefix: str, live_only: bool = False) -> list[tuple[float, LogLine]]:
        lines = self.lines[self.history or 0 :] if live_only else self.lines
        return [(t, line) for t, line in lines if line.source == "app" and line.msg.startswith(prefix + " ")]

    def latencies(self, prefix: str) -> list[float]:
        """Seconds from the echo (its own `date` in the message) to the live line's arrival here."""
        return [t - float(line.msg.split()[2]) for t, line in self.app(prefix, live_only=True)]


async def _follow_into(source: AsyncIterator[LogLine | None], into: Followed) -> None:
    async for line in source:
        if line is None:
            if into.history is None:
                into.history = len(into.lines)
        else:
            into.lines.append((time.time(), line))


async def test_app_log_follow_streams_every_job_live(cluster: Cluster) -> None:
    first = await cluster.host.add_job(spec(cmd=TICKER.format(name="first")))
    await cluster.add_job_of_other_app()
    before = Followed([])
    history = asyncio.create_task(_follow_into(cluster.host.follow_app_log("app-1", lines=100), before))
    await within(_until(lambda: len(before.app("first")) >= 2), "the first job's first lines")
    history.cancel()

    followed = Followed([])
    follower = asyncio.create_task(_follow_into(cluster.host.follow_app_log("app-1", lines=5), followed))
    try:
        await within(_until(lambda: followed.live), "the end of the history")
        assert 0 < len(followed.lines) <= 5
        second = await cluster.host.add_job(spec(cmd=TICKER.format(name="second"), dyno="web.2"))
        await within(_until(lambda: len(followed.app("second")) >= 5), "five lines of a job started later")
        await cluster.host.stop_job(first.id)
        stopped_at = len(followed.app("second"))
        await within(_until(lambda: len(followed.app("second")) >= stopped_at + 3), "lines after a job ended")
        notes = [line.msg for _, line in followed.lines if line.source == "encom" and line.job_id == first.id]
        assert "State changed from up to stopping" in notes or "State changed from stopping to down" in notes, notes
        assert {line.app_id for _, line in followed.lines} == {"app-1"}
        for name in ("first", "second"):
            late = [round(s, 3) for s in followed.latencies(name)]
            print(f"{name}: echo-to-follower latency {min(late):.3f}-{max(late):.3f} s over {len(late)} lines")
            assert max(late) < 1.0, late
        numbers = [int(line.msg.split()[1]) for _, line in followed.app("second")]
        assert numbers == list(range(1, len(numbers) + 1)), numbers  # in order, none lost
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)

    only = Followed([])
    one_job = cluster.host.follow_app_log("app-1", lines=3, job_id=second.id)
    task = asyncio.create_task(_follow_into(one_job, only))
    try:
        await within(_until(lambda: len(only.app("second")) >= 5), "lines of one job")
        assert {line.job_id for _, line in only.lines} == {second.id}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [line.job_id for line in await cluster.host.app_log("app-1", lines=3, job_id=first.id)] == [first.id] * 3
    await cluster.host.stop_job(second.id)


async def test_app_log_follow_sends_history_after_since(cluster: Cluster) -> None:
    job = await cluster.host.add_job(spec(cmd="echo one; sleep 0.2; echo two; sleep 0.2; echo three"))
    await cluster.wait_job(job.id, "down", "crashed")
    lines = [line for line in await cluster.host.app_log("app-1", lines=100) if line.source == "app"]
    assert [line.msg for line in lines] == ["one", "two", "three"]
    followed = Followed([])
    source = cluster.host.follow_app_log("app-1", lines=100, since=lines[0].timestamp)
    task = asyncio.create_task(_follow_into(source, followed))
    try:
        await within(_until(lambda: followed.live), "the end of the history")
        assert [line.msg for _, line in followed.lines if line.source == "app"] == ["two", "three"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_nonzero_exit_is_crashed_with_status(cluster: Cluster) -> None:
    job = await cluster.host.add_job(spec(cmd="exit 3"))
    ended = await cluster.wait_job(job.id, "down", "crashed", "failed")
    assert (ended.state, ended.exit_status) == ("crashed", 3), ended
    assert job.id in {j.id for j in await cluster.host.list_jobs(include_ended=True)}
    assert job.id not in {j.id for j in await cluster.host.list_jobs()}


async def test_missing_command_fails_with_reason(cluster: Cluster) -> None:
    job = await cluster.host.add_job(spec(args=["/no/such/program"]))
    ended = await cluster.wait_job(job.id, "down", "crashed", "failed")
    assert ended.state == "failed", ended
    assert ended.error and "/no/such/program" in ended.error, ended.error
    assert cluster.containers() == []


async def test_health_check_that_never_passes_fails_the_job(cluster: Cluster) -> None:
    job = await cluster.host.add_job(
        spec(cmd="sleep 60", port=True, service="myapp-web", check=HealthCheck(start_timeout=0.5))
    )
    ended = await cluster.wait_job(job.id, "down", "crashed", "failed")
    assert ended.state == "failed", ended
    assert ended.error and "health check" in ended.error
    assert await cluster.discoverd.instances("myapp-web") == []


async def test_bad_specs_are_refused(cluster: Cluster) -> None:
    with pytest.raises(ApiError) as exc:
        await cluster.host.add_job(spec())
    assert exc.value.status == 400
    with pytest.raises(ApiError) as exc:
        await cluster.host.add_job(spec(id="../evil", cmd="true"))
    assert exc.value.status in (400, 404)
    job = await cluster.host.add_job(spec(cmd="sleep 60"))
    with pytest.raises(ApiError) as exc:
        await cluster.host.add_job(job.spec)
    assert exc.value.status == 409
    with pytest.raises(ApiError) as exc:
        await cluster.host.get_job("nope")
    assert exc.value.status == 404


def slug_tarball(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def test_slug_from_the_blobstore_is_under_app(cluster: Cluster) -> None:
    path = f"slugs/app-1/{uuid.uuid4().hex}.tgz"
    tarball = slug_tarball(
        {
            "./hello.txt": "hello from the slug\n",
            "./.profile.d/greeting.sh": "export GREETING=profiled\n",
        }
    )
    await cluster.blobstore.put(path, tarball)
    job = await cluster.host.add_job(
        spec(artifact_url=f"/{path}", cmd='cat /app/hello.txt; echo "$GREETING $HOME $(pwd) $(hostname)"')
    )
    ended = await cluster.wait_job(job.id, "down", "crashed", "failed")
    assert ended.state == "down", ended
    msgs = [line.msg for line in await cluster.log_lines(job.id)]
    assert msgs == ["hello from the slug", f"profiled /app /app {job.id[:12]}"]


async def test_limits_reach_the_container(cluster: Cluster) -> None:
    resources = Resources(memory=64 << 20, cpu=500, max_fd=1234, max_procs=50)
    job = await cluster.host.add_job(spec(cmd="ulimit -n; sleep 60", resources=resources))
    await cluster.wait_job(job.id, "up")
    cgroup = Path("/sys/fs/cgroup/memory/encom") / job.id
    if cgroup.exists():  # cgroup v1 (these machines)
        assert int((cgroup / "memory.limit_in_bytes").read_text()) == 64 << 20
        cpu = Path("/sys/fs/cgroup/cpu/encom") / job.id / "cpu.shares"
        assert int(cpu.read_text()) == 500 * 1024 // 1000
        pids = Path("/sys/fs/cgroup/pids/encom") / job.id / "pids.max"
        assert pids.read_text().strip() == "50"
    else:
        assert int((Path("/sys/fs/cgroup/encom") / job.id / "memory.max").read_text()) == 64 << 20

    async def messages() -> list[str]:
        return [line.msg for line in await cluster.log_lines(job.id)]

    assert await eventually(messages, "the job's ulimit output") == ["1234"]


async def test_out_of_memory_is_reported(cluster: Cluster) -> None:
    job = await cluster.host.add_job(
        spec(args=["python3", "-c", "x = bytearray(256 << 20)"], resources=Resources(memory=32 << 20))
    )
    ended = await cluster.wait_job(job.id, "down", "crashed", "failed")
    assert (ended.state, ended.exit_status, ended.error) == ("crashed", 137, "out of memory"), ended


async def test_jobs_survive_a_host_restart_and_are_adopted(cluster: Cluster) -> None:
    web = await cluster.host.add_job(web_spec())
    await cluster.wait_job(web.id, "up")
    await cluster.stop_host(detach=True)
    assert [c["id"] for c in cluster.containers()] == [web.id]

    await cluster.start_host()
    adopted = await cluster.host.get_job(web.id)
    assert (adopted.state, adopted.port) == ("up", web.port)
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"http://127.0.0.1:{web.port}/")).status_code == 200
    another = await cluster.host.add_job(spec(cmd="sleep 60", port=True))
    assert another.port == web.port + 1 if web.port is not None else False

    instances = await eventually(lambda: cluster.discoverd.instances("myapp-web"), "the adopted job's registration")
    assert [i.id for i in instances] == [web.id]
    stopped = await cluster.host.stop_job(web.id)
    assert stopped.state == "down", stopped


async def test_full_shutdown_stops_every_job(cluster: Cluster) -> None:
    job = await cluster.host.add_job(spec(args=["sh", "-c", "trap '' TERM; sleep 60"], stop_grace=60))
    await cluster.wait_job(job.id, "up")
    started = time.monotonic()
    await cluster.stop_host(detach=False)
    assert time.monotonic() - started < 10
    assert cluster.containers() == []
    with contextlib.suppress(FileNotFoundError):
        record = json.loads((cluster.settings.data_dir / "host" / "jobs" / job.id / "job.json").read_text())
        assert record["state"] == "down"


# ---------------------------------------------------------------- the controller's follow through this real host


async def test_controller_follow_survives_a_host_restart(cluster: Cluster) -> None:
    ports = cluster.settings.ports.model_copy(update={"controller": free_port(*CONTROLLER_PORTS)})
    settings = cluster.settings.model_copy(update={"ports": ports})
    ensure_tls(settings)
    async with running_controller(settings) as client:
        app = await client.create_app("myapp")
        artifact = await client.create_artifact(ArtifactCreate(url="/slugs/myapp.tgz"))
        processes = {"web": ProcessType(cmd="true")}
        body = ReleaseCreate(app_id=app.id, artifact_id=artifact.id, processes=processes)
        release = await client.create_release(body)
        first = await cluster.host.add_job(spec(cmd=TICKER.format(name="first"), app_id=app.id))
        now = utcnow()
        report = {"app_id": app.id, "release_id": release.id, "type": "web", "state": "up"}
        await client.put_job(Job.model_validate(report | {"id": first.id, "created_at": now, "updated_at": now}))

        await expect_api_error_status(400, _drain(client.app_log_stream("myapp", lines=0)))
        await expect_api_error_status(400, _drain(client.app_log_stream("myapp", lines=10001, follow=True)))
        await expect_api_error_status(404, _drain(client.app_log_stream("nosuch")))
        missing = await expect_api_error_status(404, _drain(client.app_log_stream("myapp", job_id="nope")))
        assert missing.message == "no job nope in app myapp"
        await eventually(lambda: _has_app_lines(client, first.id), "the first job's lines via the controller")
        one = [line async for line in client.app_log_stream("myapp", lines=2, job_id=first.id)]
        assert [line.job_id for line in one if line is not None] == [first.id, first.id]

        followed = Followed([])
        follower = asyncio.create_task(_follow_into(client.app_log_stream("myapp", lines=3, follow=True), followed))
        try:
            await within(_until(lambda: followed.live), "the end of the merged history")
            assert len(followed.lines) == 3
            second = await cluster.host.add_job(spec(cmd=TICKER.format(name="second"), app_id=app.id, dyno="web.2"))
            await within(_until(lambda: len(followed.app("second")) >= 4), "lines of a job started later")
            late = followed.latencies("first") + followed.latencies("second")
            print(f"controller follow: echo-to-client latency {min(late):.3f}-{max(late):.3f} s over {len(late)} lines")
            assert max(late) < 1.0, late

            await cluster.stop_host(detach=True)  # the containers keep running; the host's streams end
            await asyncio.sleep(1.0)
            await cluster.start_host()
            seen = len(followed.app("second"))
            await within(_until(lambda: len(followed.app("second")) >= seen + 5), "lines after the host restarted")
            numbers = [int(line.msg.split()[1]) for _, line in followed.app("second")]
            assert numbers == list(range(1, len(numbers) + 1)), numbers  # caught up: nothing lost, nothing twice
            assert not follower.done()
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        for job in (first, second):
            await cluster.host.stop_job(job.id)


async def _drain(source: AsyncIterator[Any]) -> None:
    async for _ in source:
        pass


async def expect_api_error_status(status: int, awaitable: Awaitable[Any]) -> ApiError:
    error = await expect_api_error(awaitable)
    assert error.status == status, error
    return error


async def _has_app_lines(client: ControllerClient, job_id: str) -> bool:
    lines = [line async for line in client.app_log_stream("myapp", lines=50)]
    return any(line is not None and line.job_id == job_id and line.source == "app" for line in lines)

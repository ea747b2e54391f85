"""The scheduler against the real roles: formation -> containers up, crash -> replaced, scale down -> stopped.

Starts discoverd, blobstore, host, controller and scheduler in this event loop on loopback ports 26000-26999.
Needs root and runc (the host role runs real containers).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import tarfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from encom.api.client import ca_context
from encom.api.role import RoleContext
from encom.api.settings import Ports, Settings
from encom.api.types import App, ArtifactCreate, HostJob, Job, ProcessType, Release, ReleaseCreate, Resources
from encom.blobstore.client import BlobstoreClient
from encom.bootstrap.daemon import become_subreaper
from encom.bootstrap.tls import ensure_tls
from encom.controller.client import ControllerClient
from encom.host.client import HostClient
from tests.integration import roles
from tests.integration.roles import cluster_ports

pytestmark = [
    pytest.mark.integration,
]

ROLES = ("discoverd", "blobstore", "host", "controller", "scheduler")
PORTS = cluster_ports(26000)
ROLE_START_TIMEOUT = 60.0
WAIT_TIMEOUT = 60.0

SERVER = """\
import http.server, os

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ.get("DYNO", "?").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

T = TypeVar("T")


@dataclass
class Cluster:
    settings: Settings
    controller: ControllerClient
    host: HostClient
    blobstore: BlobstoreClient
    tasks: list[tuple[RoleContext, asyncio.Task[None]]] = field(default_factory=list)


async def start_role(name: str, settings: Settings) -> tuple[RoleContext, asyncio.Task[None]]:
    role = await roles.start_role(roles.role_run(name), settings, name, ROLE_START_TIMEOUT)
    return role.ctx, role.task


async def stop_roles(tasks: list[tuple[RoleContext, asyncio.Task[None]]]) -> None:
    for ctx, task in reversed(tasks):
        ctx.detach = False  # the host stops every container it runs
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def running_roles(tmp_path: Path, ports: Ports = PORTS, without: str | None = None) -> AsyncIterator[Cluster]:
    """Every role of ROLES (but `without`) in this process, on `ports`; stopped, with their containers, at the end."""
    become_subreaper()  # as encomd is: containers re-parent to us, so the host can read their exit status
    settings = Settings(data_dir=tmp_path, ports=ports, roles=list(ROLES))
    ensure_tls(settings)
    settings.save()
    verify = ca_context(settings.ca_cert_path)
    cluster = Cluster(
        settings,
        ControllerClient(settings.controller_url, settings.cluster_key, verify=verify),
        HostClient(settings.host_url, settings.internal_secret),
        BlobstoreClient(settings.blobstore_url, settings.internal_secret),
    )
    try:
        for name in ROLES:
            if name != without:
                cluster.tasks.append(await start_role(name, settings))
        yield cluster
    finally:
        await stop_roles(cluster.tasks)
        for client in (cluster.controller, cluster.host, cluster.blobstore):
            await client.aclose()
        await asyncio.to_thread(kill_leftover_containers, settings)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_roles(tmp_path) as cluster:
        yield cluster


def kill_leftover_containers(settings: Settings) -> None:
    """Belt and braces: nothing this test started may outlive it, even if the host role failed to stop it."""
    import subprocess

    root = settings.data_dir / "host" / "runc"
    if not root.exists():
        return
    listing = subprocess.run(["runc", "--root", str(root), "list", "-q"], capture_output=True, text=True)
    for container in listing.stdout.split():
        subprocess.run(["runc", "--root", str(root), "delete", "--force", container], capture_output=True)


async def wait_for(what: str, check: Callable[[], Awaitable[T | None]], within: float = WAIT_TIMEOUT) -> T:
    """Poll `check` until it returns something truthy; fail with `what` (and the last value) on timeout."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {within:.0f}s waiting for {what} (last seen: {last!r})")


def slug_tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = SERVER.encode()
        info = tarfile.TarInfo("./server.py")
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def deploy_app(cluster: Cluster) -> tuple[App, Release]:
    controller = cluster.controller
    app = await controller.create_app("sched-test")
    path = f"slugs/{app.id}/slug.tgz"
    await cluster.blobstore.put(path, slug_tarball())
    artifact = await controller.create_artifact(ArtifactCreate(url=f"/{path}"))
    release = await controller.create_release(
        ReleaseCreate(
            app_id=app.id,
            artifact_id=artifact.id,
            env={"GREETING": "hello"},
            processes={"web": ProcessType(cmd="python3 server.py")},
        )
    )
    return app, release


def up_jobs(jobs: list[Job]) -> list[Job]:
    return [j for j in jobs if j.state == "up" and j.type == "web"]


async def host_jobs_by_id(cluster: Cluster) -> dict[str, HostJob]:
    return {j.id: j for j in await cluster.host.list_jobs()}


async def fetch(port: int) -> str:
    async with httpx.AsyncClient(timeout=5.0) as client:
        return (await client.get(f"http://127.0.0.1:{port}/")).text


async def test_formation_scale_crash_and_scale_down(cluster: Cluster) -> None:
    controller = cluster.controller
    app, release = await deploy_app(cluster)

    # web=3: three jobs up, on sequential ports, as web.1..3.
    await controller.put_formation(app.id, release.id, {"web": 3})

    async def three_up() -> list[Job] | None:
        jobs = up_jobs(await controller.list_jobs(app.id))
        return jobs if len(jobs) == 3 else None

    jobs = await wait_for("3 web jobs up in the controller", three_up)
    ports = sorted(j.port for j in jobs if j.port is not None)
    assert ports == [PORTS.job_start, PORTS.job_start + 1, PORTS.job_start + 2]
    host_jobs = await host_jobs_by_id(cluster)
    assert sorted(host_jobs[j.id].spec.dyno for j in jobs) == ["web.1", "web.2", "web.3"]
    assert all(j.host_id == cluster.settings.host_id and j.release_id == release.id for j in jobs)
    answers = sorted([await fetch(port) for port in ports])
    assert answers == ["web.1", "web.2", "web.3"]

    # Kill one container's process: the scheduler replaces it, as the same dyno, with restarts=1.
    victim = host_jobs[jobs[0].id]
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)

    async def replaced() -> list[Job] | None:
        current = up_jobs(await controller.list_jobs(app.id))
        ids = {j.id for j in current}
        return current if len(current) == 3 and victim.id not in ids else None

    jobs = await wait_for(f"job {victim.id} ({victim.spec.dyno}) to be replaced", replaced)
    (replacement,) = [j for j in jobs if j.id not in host_jobs]
    assert replacement.restarts == 1
    host_jobs = await host_jobs_by_id(cluster)
    assert host_jobs[replacement.id].spec.dyno == victim.spec.dyno
    ended = {j.id: j for j in await controller.list_jobs(app.id, include_ended=True)}
    assert ended[victim.id].state == "crashed"

    # Stop one behind the scheduler's back: it is down, and replaced too.
    sneaky = jobs[0]
    await cluster.host.stop_job(sneaky.id)

    async def replaced_again() -> list[Job] | None:
        current = up_jobs(await controller.list_jobs(app.id))
        return current if len(current) == 3 and sneaky.id not in {j.id for j in current} else None

    jobs = await wait_for(f"job {sneaky.id} stopped behind the scheduler's back to be replaced", replaced_again)

    # Scale to 1: two stop, the oldest one stays, and nothing is restarted.
    await controller.put_formation(app.id, release.id, {"web": 1})

    async def one_left() -> list[Job] | None:
        current = await controller.list_jobs(app.id)
        return current if len(current) == 1 and current[0].state == "up" else None

    (survivor,) = await wait_for("scale to 1 to leave one web job", one_left)
    assert survivor.id in {j.id for j in jobs}
    active_on_host = await cluster.host.list_jobs()
    assert [j.id for j in active_on_host] == [survivor.id]
    await asyncio.sleep(0.5)  # a restart would have been immediate: make sure none comes
    assert [j.id for j in await controller.list_jobs(app.id)] == [survivor.id]

    # Deleting the app stops its last job.
    await controller.delete_app(app.id)

    async def host_empty() -> bool:
        return not await cluster.host.list_jobs()

    await wait_for("the deleted app's job to stop", host_empty)


async def test_deploy_moves_jobs_to_the_new_release(cluster: Cluster) -> None:
    controller = cluster.controller
    app, v1 = await deploy_app(cluster)
    await controller.deploy(app.id, v1.id, {"web": 2})

    async def two_up_of(release_id: str) -> list[Job] | None:
        jobs = [j for j in up_jobs(await controller.list_jobs(app.id)) if j.release_id == release_id]
        return jobs if len(jobs) == 2 else None

    await wait_for("2 web jobs of v1 up", lambda: two_up_of(v1.id))
    v2 = await controller.create_release(
        ReleaseCreate(
            app_id=app.id,
            artifact_id=v1.artifact_id,
            env={"GREETING": "bonjour"},
            processes=v1.processes,
        )
    )
    await controller.deploy(app.id, v2.id)

    async def only_v2() -> list[Job] | None:
        jobs = await controller.list_jobs(app.id)
        ok = len(jobs) == 2 and all(j.release_id == v2.id and j.state == "up" for j in jobs)
        return jobs if ok else None

    jobs = await wait_for("the 2 web jobs to move to v2", only_v2)
    host_jobs = await host_jobs_by_id(cluster)
    assert sorted(host_jobs[j.id].spec.dyno for j in jobs) == ["web.1", "web.2"]
    assert {host_jobs[j.id].spec.env["GREETING"] for j in jobs} == {"bonjour"}
    with contextlib.suppress(Exception):
        await controller.delete_app(app.id)


@pytest.fixture
async def second_host(cluster: Cluster) -> AsyncIterator[tuple[Settings, asyncio.Task[None]]]:
    """Another host agent in the same cluster, with its own data dir, API port and job ports."""
    ports = PORTS.model_copy(update={"host": PORTS.host + 1, "job_start": 26600, "job_end": 26699})
    settings = cluster.settings.model_copy(
        update={"data_dir": cluster.settings.data_dir / "second", "ports": ports, "host_id": "second-host"}
    )
    ctx, task = await start_role("host", settings)
    try:
        yield settings, task
    finally:
        await stop_roles([(ctx, task)])
        await asyncio.to_thread(kill_leftover_containers, settings)


async def test_jobs_spread_over_hosts_and_move_when_a_host_goes(
    cluster: Cluster, second_host: tuple[Settings, asyncio.Task[None]]
) -> None:
    controller = cluster.controller
    second, second_task = second_host
    first_id = cluster.settings.host_id
    app, release = await deploy_app(cluster)
    await controller.put_formation(app.id, release.id, {"web": 2})

    async def one_per_host() -> list[Job] | None:
        jobs = up_jobs(await controller.list_jobs(app.id))
        return jobs if sorted(j.host_id or "" for j in jobs) == sorted([first_id, second.host_id]) else None

    await wait_for("one web job up on each host", one_per_host)

    # The second host goes away (it stops its containers and leaves discoverd): its job moves to the first.
    second_task.cancel()
    await asyncio.gather(second_task, return_exceptions=True)

    async def both_on_first() -> list[Job] | None:
        jobs = await controller.list_jobs(app.id)
        ok = len(jobs) == 2 and all(j.state == "up" and j.host_id == first_id for j in jobs)
        return jobs if ok else None

    await wait_for("both web jobs up on the remaining host", both_on_first)
    await controller.delete_app(app.id)


async def test_restarted_scheduler_adopts_running_jobs(cluster: Cluster) -> None:
    controller = cluster.controller
    app, release = await deploy_app(cluster)
    await controller.put_formation(app.id, release.id, {"web": 2})

    async def two_up_on_host() -> list[HostJob] | None:
        jobs = await cluster.host.list_jobs()
        return jobs if len(jobs) == 2 and all(j.state == "up" for j in jobs) else None

    before = await wait_for("2 web jobs up on the host", two_up_on_host)

    # A new scheduler (state rebuilt from scratch) keeps the running jobs instead of starting new ones...
    ctx, task = cluster.tasks.pop()
    await stop_roles([(ctx, task)])
    cluster.tasks.append(await start_role("scheduler", cluster.settings))
    survivor, victim = before
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)

    # ...and still replaces one that crashes.
    async def replaced() -> list[HostJob] | None:
        jobs = await two_up_on_host()
        return jobs if jobs and victim.id not in {j.id for j in jobs} else None

    after = await wait_for("the crashed job to be replaced by the new scheduler, and no other job started", replaced)
    assert survivor.id in {j.id for j in after}
    assert sorted(j.spec.dyno for j in after) == ["web.1", "web.2"]
    await controller.delete_app(app.id)


async def test_out_of_memory_job_is_reported_and_restarted(cluster: Cluster) -> None:
    controller = cluster.controller
    app, web_release = await deploy_app(cluster)
    hog = ProcessType(
        cmd="python3 -c 'import time; x = bytearray(256 << 20); time.sleep(60)'",
        resources=Resources(memory=32 << 20),
    )
    release = await controller.create_release(
        ReleaseCreate(app_id=app.id, artifact_id=web_release.artifact_id, processes={"hog": hog})
    )
    await controller.put_formation(app.id, release.id, {"hog": 1})

    async def oom_then_restarted() -> list[Job] | None:
        jobs = [j for j in await controller.list_jobs(app.id, include_ended=True) if j.type == "hog"]
        oom = [j for j in jobs if j.state == "crashed" and j.exit_status == 137 and j.error == "out of memory"]
        return jobs if oom and any(j.restarts >= 1 for j in jobs) else None

    await wait_for("the hog job to end out of memory and be restarted", oom_then_restarted)
    await controller.delete_app(app.id)
